"""Trial isolation: candidates are built and scored in a separate worker process, so a trial
that hangs, crashes (segfault, killed by the out-of-memory killer) or grows without bound is
recorded as failed with its reason and the study goes on.

The worker is persistent: it is started once (spawn, not fork), builds its own `Workbench`
from the study config (model, data, calibration batches) and then evaluates the plans sent
to it over a pipe with `trial.evaluate`, so its caches stay warm from trial to trial. The
parent keeps Optuna (ask/tell) and every storage write; it waits for each result with a
wall-clock limit and watches the worker's resident memory (from /proc). A worker that runs
out of time or memory is killed, the trial fails with the reason, and a fresh worker is
started for the next trial (its start-up time is logged).

Testing hook: `SLIMFORMER_FAULT` (see `faults.py`) injects hangs, crashes and runaway memory
at chosen trial numbers; here the WORKER reads it.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
import threading
import time

from slimformer.methods import Plan

from ..config import StudyConfig
from ..devices.registry import get_runtime
from ..study.records import TrialRecord
from ..study.session import SearchSession
from ..study.trial import evaluate
from .faults import fault_for, inject

__all__ = ["InProcessRunner", "IsolatedRunner", "WorkerFailure", "WorkerStartError", "make_runner", "isolation_enabled",
           "DEFAULT_TRIAL_TIMEOUT", "AUTO_ISOLATE_TRIALS"]

DEFAULT_TRIAL_TIMEOUT = 600.0  # seconds; or 5x the slowest finished trial when that is longer
AUTO_ISOLATE_TRIALS = 50  # search.isolate: auto isolates studies of at least this many trials
STARTUP_TIMEOUT = 600.0
POLL_S = 0.05
MAX_FAILED_STARTS = 3


class WorkerStartError(RuntimeError):
    """The worker failed to start several times in a row: the search stops (exit 1)."""


class WorkerFailure(Exception):
    """The trial's worker hung, crashed or exceeded its memory limit; `reason` says which."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def isolation_enabled(cfg: StudyConfig, target: int) -> bool:
    value = cfg.search.isolate
    return target >= AUTO_ISOLATE_TRIALS if value == "auto" else bool(value)


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class InProcessRunner:
    """Evaluate candidates in this process (search.isolate: false)."""

    isolated = False

    def __init__(self, bench):
        self.bench = bench

    def evaluate(self, plan: Plan, baseline: dict, number: int, quality: float | None = None) -> dict:
        inject(fault_for(number))
        return evaluate(self.bench, plan, baseline, quality=quality)

    def close(self) -> None:
        pass


# ----- the worker process --------------------------------------------------------------------
def _die_with_parent() -> None:
    """Linux: the kernel kills the worker when the search process dies (even by kill -9)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _worker_main(conn, cfg: StudyConfig, parent_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _die_with_parent()
    if os.getppid() != parent_pid:
        return
    try:
        from ..problem.workbench import Workbench

        bench = Workbench(cfg, log=lambda msg: None)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        conn.send(("startup_error", _reason(exc)))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] != "eval":
            return
        _, number, plan, baseline, quality = msg
        try:
            inject(fault_for(number))
            conn.send(("ok", evaluate(bench, Plan.from_dict(plan), baseline, quality=quality)))
        except Exception as exc:  # noqa: BLE001 - a failed candidate is reported, not fatal
            conn.send(("error", _reason(exc)))


# ----- the parent side -------------------------------------------------------------------------
def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def default_memory_mb() -> int:
    """75% of this machine's memory (or of the container's cgroup limit, when lower)."""
    total = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    total = int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        if limit.isdigit():
            total = min(total or float("inf"), int(limit) / 2**20)
    except OSError:
        pass
    return int(0.75 * total) if total else 8192


def _died(exitcode: int | None) -> str:
    if exitcode is None:
        return "worker died"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "unknown"
        hint = "; the system may have run out of memory" if -exitcode == signal.SIGKILL else ""
        return f"worker died: signal {-exitcode} ({name}{hint})"
    return f"worker exited with code {exitcode}"


class IsolatedRunner:
    """Evaluate candidates in a persistent worker process with a time and a memory limit."""

    isolated = True

    def __init__(self, cfg: StudyConfig, log=print, timeout: float | None = None, memory_mb: int | None = None,
                 slowest_s: float = 0.0):
        self.cfg, self.log = cfg, log
        self.fixed_timeout = timeout
        self.memory_mb = memory_mb or default_memory_mb()
        self.slowest_s = slowest_s
        self.proc = None
        self.conn = None
        self.starts = 0
        self.failed_starts = 0
        atexit.register(self.close)

    @property
    def timeout(self) -> float:
        if self.fixed_timeout is not None:
            return self.fixed_timeout
        return max(DEFAULT_TRIAL_TIMEOUT, 5 * self.slowest_s)

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent_conn, child_conn = ctx.Pipe()
        t0 = time.monotonic()
        proc = ctx.Process(target=_worker_main, args=(child_conn, self.cfg, os.getpid()), name="slimformer-trial")
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
        try:  # the new interpreter starts with Ctrl-C ignored (no KeyboardInterrupt while it imports)
            proc.start()
        finally:
            if main_thread:
                signal.signal(signal.SIGINT, previous)
        child_conn.close()
        self.proc, self.conn = proc, parent_conn
        self.starts += 1
        try:
            msg = self._wait(STARTUP_TIMEOUT, "start")
            if msg[0] != "ready":
                self._kill()
                raise WorkerFailure(msg[1])
        except WorkerFailure as exc:
            self.failed_starts += 1
            if self.failed_starts >= MAX_FAILED_STARTS:
                raise WorkerStartError(f"the trial worker failed to start {self.failed_starts} times in a row; "
                                   f"last: {exc.reason}") from None
            raise WorkerFailure(f"trial worker failed to start: {exc.reason}") from None
        self.failed_starts = 0
        self.log(f"isolated trial worker started (pid {proc.pid}) in {time.monotonic() - t0:.1f} s; "
                 f"limits: {self.timeout:.0f} s and {self.memory_mb} MB per trial")

    def _kill(self) -> None:
        proc, self.proc = self.proc, None
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if proc is not None and proc.is_alive():
            proc.kill()
        if proc is not None:
            proc.join(10)

    def _wait(self, limit: float, what: str):
        """The worker's next message, or WorkerFailure (after killing it) on time/memory/crash."""
        start = time.monotonic()
        try:
            while True:
                if self.conn.poll(POLL_S):
                    try:
                        return self.conn.recv()
                    except (EOFError, OSError):
                        self.proc.join(5)
                        raise WorkerFailure(_died(self.proc.exitcode)) from None
                if not self.proc.is_alive():
                    raise WorkerFailure(_died(self.proc.exitcode))
                rss = _rss_mb(self.proc.pid)
                if rss is not None and rss > self.memory_mb:
                    raise WorkerFailure(f"exceeded the {self.memory_mb} MB memory limit ({rss:.0f} MB resident)")
                if time.monotonic() - start > limit:
                    raise WorkerFailure(f"timed out after {limit:.0f} s" if what == "eval" else
                                        f"no answer within {limit:.0f} s")
        except BaseException:  # a failure or Ctrl-C: this worker is abandoned
            self._kill()
            raise

    def evaluate(self, plan: Plan, baseline: dict, number: int, quality: float | None = None) -> dict:
        if self.proc is None:
            self._start()
        t0 = time.monotonic()
        try:
            self.conn.send(("eval", number, plan.to_dict(), baseline, quality))
        except (OSError, ValueError):
            self._kill()
            raise WorkerFailure("worker died before the trial started") from None
        msg = self._wait(self.timeout, "eval")
        if msg[0] == "error":
            raise WorkerFailure(msg[1])
        self.slowest_s = max(self.slowest_s, time.monotonic() - t0)
        return msg[1]

    def close(self) -> None:
        if self.proc is not None:
            try:
                self.conn.send(("stop",))
            except (OSError, ValueError):
                pass
            self.proc.join(2)
            self._kill()


def make_runner(session: SearchSession):
    """The runner for this search: an isolated worker (search.isolate) or this process."""
    cfg, log = session.cfg, session.log
    if not isolation_enabled(cfg, session.target):
        return InProcessRunner(session.bench)
    for name in session.bench.runtimes:
        if get_runtime(name).fresh_process_cost:
            log(f"note: isolated trials with runtime {name}: {get_runtime(name).fresh_process_cost}")
    from optuna.trial import TrialState

    slowest = 0.0
    for t in session.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        a = TrialRecord.of(t)
        slowest = max(slowest, float(a.build_s or 0) + float(a.eval_s or 0))
    s = cfg.search
    return IsolatedRunner(cfg, log=log, timeout=s.trial_timeout, memory_mb=s.trial_memory_mb, slowest_s=slowest)
