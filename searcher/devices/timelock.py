"""The host's timing lock: one latency measurement at a time on a host, and none of the study's other
work running beside it.

Every process of a study on one host (the single search, `--workers` processes, local Ray trials,
an isolated trial's child) opens the same lock file, a per-host path derived from the study's
folder (`lock_path`). A process doing study work (a trial's build, importance, mask tuning,
distillation, scoring: `working()`) holds it SHARED, so any number of them run side by side; a
latency measurement (`timing()`) holds it EXCLUSIVE, so it starts only when every other process
has finished the piece of work it is in and it has the host alone, and no other measurement and no
other work runs until it ends. A measurement waiting for its turn blocks new work from starting
(writer preference, through a second file, the gate), so a stream of builds never starves it.

The locks are `fcntl.flock` locks: the kernel releases them when the process holding them ends,
however it ends (a worker killed with -9 in the middle of a measurement frees the host at once).
The path is in the host's temporary folder, not in the study's folder: on a Ray cluster or a shared
file system every node has its own lock (one measurement at a time per node), and no lock goes
through NFS. SLIMFORMER_TIMING_LOCK names another file (e.g. one for every study of the host).

One thread per process uses it (the trial loop's); nested `working()`/`timing()` are no-ops.

Imports: errors.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

__all__ = ["TimingLock", "timing_lock", "lock_path", "LOCK_ENV"]

LOCK_ENV = "SLIMFORMER_TIMING_LOCK"  # one lock file for every study that names it
_LOCKS: dict[tuple[int, str], TimingLock] = {}


def lock_path(folder: str | Path | None) -> Path:
    """The timing lock of the studies in `folder` (default: the working folder) on this host."""
    if os.environ.get(LOCK_ENV):
        return Path(os.environ[LOCK_ENV])
    key = str(Path(folder or Path.cwd()).resolve())
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"slimformer-timing-{digest}.lock"


def timing_lock(path: str | Path) -> TimingLock:
    """This process's lock on `path` (one per process: a flock belongs to an open file, and two
    opens of one file in one process would exclude each other)."""
    key = (os.getpid(), str(path))
    if key not in _LOCKS:
        _LOCKS[key] = TimingLock(Path(path))
    return _LOCKS[key]


class TimingLock:
    def __init__(self, path: Path):
        self.path = path
        self.gate_path = path.with_name(path.name + ".gate")
        self._main: int | None = None
        self._gate: int | None = None
        self._work = 0  # depth of working()
        self._timing = 0  # depth of timing()
        self.waited_s = 0.0  # all the time this process spent waiting for the lock

    def _fds(self) -> tuple[int, int]:
        if self._main is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._main = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            self._gate = os.open(self.gate_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        return self._main, self._gate

    def _acquire(self, mode: int) -> float:
        """Take the main lock in `mode` through the gate; returns the seconds waited."""
        main, gate = self._fds()
        t0 = time.perf_counter()
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(main, mode)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
        waited = time.perf_counter() - t0
        self.waited_s += waited
        return waited

    def _release(self) -> None:
        fcntl.flock(self._fds()[0], fcntl.LOCK_UN)

    @contextmanager
    def working(self):
        """Study work that no measurement on this host may overlap (shared with other work)."""
        if self._work or self._timing:
            self._work += 1
            try:
                yield
            finally:
                self._work -= 1
            return
        self._acquire(fcntl.LOCK_SH)
        self._work = 1
        try:
            yield
        finally:
            self._work = 0
            if not self._timing:
                self._release()

    @contextmanager
    def timing(self):
        """The host alone: yields the seconds waited for it (0.0 when nested)."""
        if self._timing:
            self._timing += 1
            try:
                yield 0.0
            finally:
                self._timing -= 1
            return
        if self._work:
            self._release()  # never wait for the exclusive lock while holding the shared one
        try:
            waited = self._acquire(fcntl.LOCK_EX)
        except BaseException:
            if self._work:
                self._acquire(fcntl.LOCK_SH)
            raise
        self._timing = 1
        try:
            yield waited
        finally:
            self._timing = 0
            self._release()
            if self._work:  # back to shared work (after any measurement already waiting for its turn)
                self._acquire(fcntl.LOCK_SH)
