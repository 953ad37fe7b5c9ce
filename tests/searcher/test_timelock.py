"""The host's timing lock (searcher/devices/timelock.py): two processes of one study never time at
the same time, and neither works while the other times; a trial times at the study's device.threads
whatever --workers is; a process killed with -9 in the middle of a measurement frees the host."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _bench(study: str, workers: int = 1):
    from slimformer.searcher.backends.workers import with_scale_out, worker_config
    from slimformer.searcher.config import load_study_config
    from slimformer.searcher.problem.workbench import Workbench

    cfg = with_scale_out(load_study_config(study), workers, None, None)
    return Workbench(worker_config(cfg) if workers > 1 else cfg, log=lambda msg: None)


def child(study: str, out: str, start_at: float, mode: str) -> None:
    """One process of the study (run with `python -c`): `overlap` works and times three times,
    writing every interval to `out`; `hang` starts a measurement whose runner never returns."""
    bench = _bench(study)
    bench.baseline_runner  # noqa: B018 - the attention choice (itself timed) before the start line
    log = open(out, "a", buffering=1)

    def note(kind: str, t0: float, t1: float, n: int) -> None:
        log.write(json.dumps({"pid": os.getpid(), "kind": kind, "t0": t0, "t1": t1, "n": n}) + "\n")

    while time.time() < start_at:
        time.sleep(0.01)
    if mode == "hang":
        def hang():
            note("started", time.time(), time.time(), 0)
            time.sleep(3600)

        bench.latency_of({"fake": hang}, rounds=3)
        return
    for n in range(3):
        with bench.working():  # a trial's work: a build, say
            t0 = time.time()
            time.sleep(0.6)
            note("work", t0, time.time(), n)

        def fake(n=n):
            t0 = time.time()
            time.sleep(0.003)
            note("time", t0, time.time(), n)

        bench.latency_of({"fake": fake}, rounds=8)


def _start(study: Path, out: Path, start_at: float, mode: str) -> subprocess.Popen:
    code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import test_timelock as t; "
            f"t.child({str(study)!r}, {str(out)!r}, {start_at!r}, {mode!r})")
    return subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)


def _spans(rows: list[dict]) -> dict:
    """(pid, n) -> (first start, last end) of each measurement's fake calls."""
    spans: dict = {}
    for r in rows:
        if r["kind"] == "time":
            key = (r["pid"], r["n"])
            lo, hi = spans.get(key, (r["t0"], r["t1"]))
            spans[key] = (min(lo, r["t0"]), max(hi, r["t1"]))
    return spans


def test_two_processes_never_time_together_nor_work_beside_a_timing(make_study, tmp_path):
    study = make_study(device={"threads": 1, "seq_len": 16, "rounds": 4, "warmup": 1})
    out = tmp_path / "intervals.jsonl"
    start_at = time.time() + 25  # both processes loaded, then they start on the same line
    procs = [_start(study, out, start_at, "overlap") for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    pids = {r["pid"] for r in rows}
    assert len(pids) == 2
    assert min(r["t0"] for r in rows) >= start_at  # both were ready: the test is not two runs one after the other
    spans = _spans(rows)
    assert len(spans) == 6  # three measurements in each process
    for (pid, n), (lo, hi) in spans.items():
        others = [r for r in rows if r["pid"] != pid]
        clash = [r for r in others if r["t0"] < hi and r["t1"] > lo]  # any call or any work of the other one
        assert not clash, (pid, n, lo, hi, clash)
    work = {pid: [(r["t0"], r["t1"]) for r in rows if r["pid"] == pid and r["kind"] == "work"] for pid in pids}
    a, b = work.values()
    # the work itself ran side by side (shared): what --workers buys
    assert any(x0 < y1 and y0 < x1 for x0, x1 in a for y0, y1 in b)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_trial_times_at_the_study_threads_whatever_workers(make_study, workers, one_thread):
    import torch
    from slimformer.methods import Plan
    from slimformer.searcher.study.records import TIMING_THREADS, TIMING_WAIT_S
    from slimformer.searcher.study.trial import evaluate

    study = make_study(device={"threads": 2, "seq_len": 16, "rounds": 4, "warmup": 1, "max_rounds": 4})
    bench = _bench(str(study), workers)
    share = 2 // workers
    assert torch.get_num_threads() == share  # building and scoring: the worker's share
    seen = []

    def fake():
        seen.append(torch.get_num_threads())

    bench.latency_of({"fake": fake}, rounds=3)
    assert seen and set(seen) == {2}  # the measurement: the study's device.threads
    assert torch.get_num_threads() == share  # and back to the share after it
    result = evaluate(bench, Plan(ffn=128), {"latency_ms": 1.0, "quality": 0.0})
    assert result[TIMING_THREADS] == 2
    assert result[TIMING_WAIT_S] >= 0.0
    assert torch.get_num_threads() == share


def test_a_process_killed_mid_measurement_frees_the_host(make_study, tmp_path):
    from slimformer.searcher.devices.timelock import lock_path, timing_lock

    study = make_study(device={"threads": 1, "seq_len": 16, "rounds": 4, "warmup": 1})
    out = tmp_path / "hang.jsonl"
    holder = _start(study, out, 0.0, "hang")
    end = time.time() + 240
    while not (out.exists() and out.read_text().strip()):  # the holder is inside its measurement
        assert holder.poll() is None and time.time() < end, holder.stderr.read()[-3000:] if holder.poll() else "slow"
        time.sleep(0.1)
    lock = timing_lock(lock_path(study.parent))  # the same lock a worker of this study takes
    done = threading.Event()
    waited = []

    def next_trial():
        with lock.timing() as w:
            waited.append(w)
        done.set()

    threading.Thread(target=next_trial, daemon=True).start()
    assert not done.wait(1.5)  # blocked while the holder measures
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    assert done.wait(30)  # the kernel released the killed process's lock: the next one proceeds
    assert waited[0] >= 1.5


def test_another_cpu_is_refused_for_timing():
    from slimformer.searcher.devices.latency import cpu_refusal, device_facts

    here = device_facts(1)
    assert cpu_refusal(here) is None and cpu_refusal(None) is None
    other = cpu_refusal({**here, "cpu": "Another CPU 9000"})
    assert other.startswith("refused for timing") and "Another CPU 9000" in other and here["cpu"] in other
    assert cpu_refusal({**here, "flags": [*here["flags"], "amx_tile"]}) is not None  # same model, other ISA


def test_the_ray_trial_module_imports_nothing_heavy():
    # Ray unpickles the trainable by importing its module: that import must not load torch beside a
    # measurement (the loading happens inside the trial, under the lock)
    code = ("import sys; import slimformer.searcher.backends.raytrial as r; "
            "print('torch' in sys.modules, 'transformers' in sys.modules, callable(r.evaluate_plan))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False", "True"], out.stderr


def test_a_ray_worker_loads_its_model_holding_the_lock(make_study, monkeypatch, tmp_path):
    # while a Ray trial builds its Workbench, no measurement on the host can take the lock
    import fcntl

    from slimformer.searcher.backends import raytrial
    from slimformer.searcher.config import load_study_config
    from slimformer.searcher.devices.timelock import lock_path
    from slimformer.searcher.problem import workbench

    lock_file = tmp_path / "host.lock"
    monkeypatch.setenv("SLIMFORMER_TIMING_LOCK", str(lock_file))
    cfg = load_study_config(make_study())
    seen = {}

    class Probe:
        def __init__(self, cfg, log=print):
            assert lock_path(None) == lock_file
            fd = os.open(lock_file, os.O_RDWR)
            try:  # what a measurement does: the exclusive lock, without waiting
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen["exclusive"] = True
            except BlockingIOError:
                seen["exclusive"] = False
            finally:
                os.close(fd)
            raise RuntimeError("probe done")

    monkeypatch.setattr(workbench, "Workbench", Probe)
    with pytest.raises(RuntimeError, match="probe done"):
        raytrial.evaluate_plan({"number": 0, "plan": {}}, cfg=cfg, baseline=None, faults=None, device=None)
    assert seen == {"exclusive": False}
    fd = os.open(lock_file, os.O_RDWR)  # and it is released when the trial ends, however it ends
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd)
