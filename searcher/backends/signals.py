"""Graceful stop for long searches: the first Ctrl-C (or SIGTERM) stops the study cleanly,
the second one exits at once.

- First signal: if the search is inside an interruptible part (building and scoring a
  candidate), `KeyboardInterrupt` is raised there, so the current trial is abandoned,
  recorded as failed and queued again. If it is inside a storage write (ask, tell, user
  attributes), the stop is deferred until the write is done, so no write is cut in half.
- Second signal: exit immediately with code 130. The storage stays consistent: SQLite rolls
  back an unfinished transaction, and a trial left RUNNING belongs to a dead process, which
  the next `slimformer search` finds, marks failed and queues again (`fail_stale_trials`).

Outside an installed `StopGuard` (the Python API), `protected()` and `interruptible()` do
nothing and Python's own Ctrl-C handling applies.
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager

__all__ = ["StopGuard", "stop_guard", "protected", "interruptible", "EXIT_INTERRUPTED"]

EXIT_INTERRUPTED = 130


class StopGuard:
    def __init__(self):
        self.signals = 0  # stop requests received
        self._protected = 0  # depth of protected (non-interruptible) sections
        self._interruptible = 0
        self._pending = False  # a stop arrived inside a protected section
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signals > 0

    # ----- signal handling ----------------------------------------------------------------
    def _handler(self, signum, frame):
        self.signals += 1
        if self.signals >= 2:
            try:
                os.write(2, b"slimformer: second interrupt: exiting now; the storage is consistent and the "
                            b"trial that was running is retried on resume\n")
            finally:
                os._exit(EXIT_INTERRUPTED)
        name = signal.Signals(signum).name
        os.write(2, f"slimformer: {name} received: stopping after recording the current trial "
                    f"(press Ctrl-C again to exit at once)\n".encode())
        if self._protected and not self._interruptible:
            self._pending = True
            return
        raise KeyboardInterrupt

    def install(self) -> StopGuard:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    # ----- sections -------------------------------------------------------------------------
    @contextmanager
    def protected(self):
        """A storage write: a stop request waits until it is done."""
        saved = self._interruptible
        self._interruptible = 0
        self._protected += 1
        try:
            yield
        finally:
            self._protected -= 1
            self._interruptible = saved
        if self._pending and (self._interruptible or not self._protected):
            self._pending = False
            raise KeyboardInterrupt

    @contextmanager
    def interruptible(self):
        """Work that may be abandoned (building/scoring a candidate): a stop request raises here."""
        if self.requested:
            self._pending = False
            raise KeyboardInterrupt
        self._interruptible += 1
        try:
            yield
        finally:
            self._interruptible -= 1


_current: StopGuard | None = None


@contextmanager
def stop_guard():
    """Install a StopGuard for SIGINT and SIGTERM for the duration of the block."""
    global _current
    guard = StopGuard().install()
    _current = guard
    try:
        yield guard
    finally:
        guard.uninstall()
        _current = None


@contextmanager
def protected():
    if _current is None:
        yield
    else:
        with _current.protected():
            yield


@contextmanager
def interruptible():
    if _current is None:
        yield
    else:
        with _current.interruptible():
            yield

