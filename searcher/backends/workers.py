"""`--workers K` on one machine: K worker processes run the study's trial loop against one
storage (Optuna's distributed mode: every worker asks and tells the same study).

The parent creates or resumes the study (metadata, baseline measured once, seeded plans) and
hands the prepared session to `run`, which starts the workers with `spawn`. Each worker is
`run_search` on the existing study (so it runs the local backend) with its own sampler seed.
It builds and scores candidates at its share of the threads (search.worker_threads, default
`device.threads // K`), and times them on the device the study names: at `device.threads`, holding
the host's timing lock, so no other measurement and no other work of the study runs beside it
(searcher/devices/timelock.py; each trial records its wait, `timing_wait_s`). What the K workers
run in parallel is the work between measurements. A worker starts a trial only while
finished + running trials (all workers) are below the target, so the study stops at the total;
the check and the start are not one atomic step, so in the worst case up to K-1 trials beyond
the target can finish (it needs two workers to look within the same few milliseconds).

A worker that dies leaves its trial RUNNING with its pid: the parent marks it failed, queues its
plan again and starts a replacement. Ctrl-C (or SIGTERM) in the parent stops every worker; their
interrupted trials are queued again, as in a single-process search.
"""

from __future__ import annotations

import importlib.util
import multiprocessing as mp
import os
import signal
import sys
import time

from ..errors import UserError
from ..study.owners import fail_stale_trials
from ..study.session import SearchSession

__all__ = ["check_scale_out", "is_worker", "run", "with_scale_out", "worker_threads", "worker_config"]

_WORKER: int | None = None  # this process's worker index, in a worker
STOP_GRACE_S = 30  # how long stopped workers get to put their trial back in the queue


def is_worker() -> bool:
    return _WORKER is not None


def worker_threads(cfg) -> int:
    """The torch threads a worker builds and scores at (never what it times at: device.threads)."""
    s = cfg.search
    return s.worker_threads or max(1, cfg.device.threads // s.workers)


def worker_config(cfg, threads: int | None = None):
    """The study config a worker runs: device.threads as the study names it (every measurement), and
    search.worker_threads set to its share (`threads`, default `worker_threads(cfg)`) for the rest."""
    share = threads or worker_threads(cfg)
    return cfg.model_copy(update={"search": cfg.search.model_copy(update={"worker_threads": share})})


def with_scale_out(cfg, workers: int | None, backend: str | None, address: str | None):
    """The study config with the command line's --workers/--backend/--address applied."""
    update = {k: v for k, v in {"workers": workers, "backend": backend, "ray_address": address}.items()
              if v is not None}
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be 1 or more, got {workers}")
    if address is not None and (backend or cfg.search.backend) != "ray":
        raise UserError("--address joins a Ray cluster: use it with --backend ray")
    return cfg.model_copy(update={"search": cfg.search.model_copy(update=update)}) if update else cfg


def check_scale_out(cfg, url: str) -> None:
    """Refuse combinations that would lose or corrupt trials, before anything is written."""
    s = cfg.search
    if s.backend == "ray":
        if importlib.util.find_spec("ray") is None:
            raise UserError("--backend ray needs Ray Tune, which is not installed: pip install 'slimformer[ray]'")
        return  # the Ray driver is the only process that writes the study: any storage works
    if s.workers > 1 and url.startswith("sqlite"):
        raise UserError(f"--workers {s.workers} needs a storage that several processes can write: SQLite is "
                        f"safe for one worker only; use --storage {cfg.name}.journal (one machine) or "
                        "--storage postgresql+psycopg://USER:PASSWORD@HOST/DB (one or several machines)")


def _worker_main(index: int, cfg, url: str, name: str, target: int, timeout: float | None,
                 seed: int | None, search) -> None:
    """Entry of one worker process: the study's trial loop (`search`, which is
    `searcher.search.run_search`: passed in, so this module does not import the search), quiet
    progress, tagged log lines."""
    global _WORKER
    _WORKER = index
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    def log(msg: str) -> None:
        print(f"[worker {index}] {msg}", file=sys.stderr, flush=True)

    from transformers.utils import logging as hf_logging

    from .signals import stop_guard

    hf_logging.set_verbosity_error()
    _ignore_stops()  # outside the guard below (start-up, exit) a stop has nothing to stop
    try:
        # the same two-stage stop as the parent: a storage write is never cut in half
        with stop_guard():
            search(cfg, trials=target, timeout=timeout, storage=url, study_name=name, seed=seed,
                       log=log, progress=False)
    except KeyboardInterrupt:
        sys.exit(130)
    except UserError as exc:
        log(f"error: {exc}")
        sys.exit(2)


def _ignore_stops() -> None:
    """Outside its trial loop a worker has nothing to stop: a stop that arrives while it exits
    (the parent stops every worker when one is interrupted) would otherwise be raised inside the
    interpreter's exit handlers and print a traceback. The stop guard restores this on exit."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def run(session: SearchSession) -> None:
    """Run the study to `session.target` counted trials with cfg.search.workers processes, each
    running `session.run_search` (a module-level function: `spawn` sends it by name) on the
    existing study."""
    from ..study.records import counted

    cfg, study, handle, log = session.cfg, session.study, session.handle, session.log
    target, timeout, seed, search = session.target, session.timeout, session.seed, session.run_search
    k = cfg.search.workers
    threads = worker_threads(cfg)
    wcfg = worker_config(cfg, threads)
    log(f"{k} workers on {handle.url}: building and scoring at {threads} torch thread(s) each; every latency "
        f"measurement at the study's {cfg.device.threads} thread(s), one at a time on this host (timing lock)")
    ctx = mp.get_context("spawn")
    deadline = None if timeout is None else time.monotonic() + timeout
    procs: dict[int, mp.Process] = {}
    next_index = 0
    restarts = 0

    def start() -> None:
        nonlocal next_index
        left = None if deadline is None else max(1.0, deadline - time.monotonic())
        wseed = None if seed is None else seed + next_index
        p = ctx.Process(target=_worker_main, name=f"slimformer-worker-{next_index}",
                        args=(next_index, wcfg, handle.url, handle.name, target, left, wseed, search))
        p.start()
        procs[next_index] = p
        next_index += 1

    def finished() -> int:
        return sum(counted(t) for t in study.get_trials(deepcopy=False))

    try:
        for _ in range(k):
            start()
        user_errors = []
        while procs:
            time.sleep(0.5)
            for i, p in list(procs.items()):
                if p.is_alive():
                    continue
                del procs[i]
                if p.exitcode == 0:
                    continue
                if p.exitcode == 2:
                    user_errors.append(i)
                    continue
                # killed or crashed: its running trial goes back in the queue, a new worker takes over
                log(f"worker {i} ended with exit code {p.exitcode}")
                fail_stale_trials(study, log)
                time_left = deadline is None or time.monotonic() < deadline
                if restarts < k and finished() < target and time_left:
                    restarts += 1
                    start()
        if user_errors:
            raise UserError(f"worker {user_errors[0]} stopped on an error (its message is above)")
    except KeyboardInterrupt:
        _stop(procs, log)
        fail_stale_trials(study, log)
        raise


def _stop(procs: dict[int, mp.Process], log) -> None:
    """Interrupt every worker (each puts its trial back in the queue), then kill stragglers."""
    end = time.monotonic() + 2  # a terminal's Ctrl-C already reached them: let them finish first
    for p in procs.values():
        p.join(max(0.0, end - time.monotonic()))
    for p in procs.values():
        if p.is_alive():
            os.kill(p.pid, signal.SIGINT)
    end = time.monotonic() + STOP_GRACE_S
    for p in procs.values():
        p.join(max(0.0, end - time.monotonic()))
        if p.is_alive():
            log(f"worker {p.name} did not stop in {STOP_GRACE_S} s: killed")
            p.kill()
            p.join()
