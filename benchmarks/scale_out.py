"""Scale-out check: one study run by 1 worker and by 4 workers (journal file and PostgreSQL),
and by Ray Tune with the driver killed mid-study and resumed. Checks that no trial is lost or
duplicated and that every finished trial's plan and values are stored together; times each run.

Model: the tests' tiny random-init BERT (4 layers, hidden 64) with MiniLM's tokenizer on the
quickstart STS-B files, so each run stays within a few minutes on a 2-core machine.

    OMP_NUM_THREADS=1 python benchmarks/scale_out.py            # writes benchmarks/scale_out_results.{md,json}
    OMP_NUM_THREADS=1 python benchmarks/scale_out.py --trials 40 --workers 4 --ray-trials 20
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "searcher"))

from conftest import build_tiny_model, write_study  # noqa: E402
from pgserver import PostgresServer, unavailable_reason  # noqa: E402


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "slimformer.searcher.cli", *map(str, args)],
                          capture_output=True, text=True, **kw)


def load(url: str, name: str = "study"):
    import optuna
    from slimformer.searcher.study.storage import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(url, read_only=True))


def audit(url: str, target: int) -> dict:
    """Lost/duplicate trials and intact plans/values, as counts."""
    from optuna.trial import TrialState
    from slimformer.methods import Plan

    trials = load(url).get_trials()
    numbers = sorted(t.number for t in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    intact = sum(Plan.from_dict(t.user_attrs["plan"]).to_dict() == t.user_attrs["plan"]
                 and t.values == [t.user_attrs["quality"], t.user_attrs["latency_ms"]] for t in complete)
    plans = [json.dumps(t.user_attrs["plan"], sort_keys=True) for t in complete]
    return {
        "trials": len(trials), "complete": len(complete), "target": target,
        "numbers_contiguous": numbers == list(range(len(trials))),
        "left_running_or_waiting": sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
        "intact": intact, "repeated_plans": len(plans) - len(set(plans)),
        "processes": len({t.user_attrs.get("pid") for t in complete}),
    }


def timed_search(study: Path, url: str, workers: int, extra=()) -> dict:
    t0 = time.perf_counter()
    res = cli("search", study, "--storage", url, "--workers", workers, *extra)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"search failed ({res.returncode}): {res.stderr[-2000:]}")
    return {"wall_s": round(wall, 1)}


def ray_kill_resume(study: Path, trials: int, workers: int) -> dict:
    from optuna.trial import TrialState

    url = f"sqlite:///{study.parent / 'study.db'}"
    cmd = [sys.executable, "-m", "slimformer.searcher.cli", "search", str(study), "--backend", "ray",
           "--workers", str(workers)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    finished = {}
    while proc.poll() is None:
        time.sleep(0.5)
        try:
            trials_now = load(url).get_trials(deepcopy=False)
        except Exception:  # noqa: BLE001 - not created yet
            continue
        finished = {t.number: t.params for t in trials_now if t.state == TrialState.COMPLETE}
        if len(finished) >= trials // 2:
            break
    running = [t.number for t in load(url).get_trials() if t.state == TrialState.RUNNING]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first_s = time.perf_counter() - t0
    time.sleep(3)
    leftover = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()
    if leftover:
        os.killpg(proc.pid, signal.SIGKILL)
    t1 = time.perf_counter()
    res = cli("search", study, "--backend", "ray", "--workers", workers)
    if res.returncode != 0:
        raise SystemExit(f"resume failed: {res.stderr[-2000:]}")
    after = {t.number: t for t in load(url).get_trials()}
    kept = all(after[n].state == TrialState.COMPLETE and after[n].params == p for n, p in finished.items())
    retried = [t for t in after.values() if t.user_attrs.get("retry_of") in running]
    return {"killed_after_s": round(first_s, 1), "complete_before_kill": len(finished),
            "running_at_kill": running, "ray_processes_left_by_the_killed_driver": len(leftover),
            "resume_wall_s": round(time.perf_counter() - t1, 1), "finished_kept": kept,
            "retried_and_complete": sum(t.state == TrialState.COMPLETE for t in retried),
            "audit": audit(url, trials)}


def shape(obj):
    if isinstance(obj, dict):
        return {k: shape(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [shape(obj[0])] if obj and isinstance(obj[0], dict) else "list"
    return type(obj).__name__


def report_fields(study: Path, url: str) -> dict:
    res = cli("report", study, "--storage", url, "--json", "--all", "--no-rescore")
    if res.returncode != 0:
        raise SystemExit(f"report failed: {res.stderr[-2000:]}")
    rep = json.loads(res.stdout)
    return {"top": sorted(rep), "trial": shape(rep["trials"][0]), "pareto": sorted(rep["pareto"][0])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--ray-trials", type=int, default=20)
    ap.add_argument("--ray-workers", type=int, default=2)
    ap.add_argument("--skip", nargs="*", default=(), choices=("journal", "postgres", "ray"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="scale-out-"))
    model = build_tiny_model(work / "tiny")
    out = {"model": "tiny random BERT (4 layers, hidden 64), MiniLM tokenizer, 64 STS-B dev pairs, seq 32",
           "cpus": os.cpu_count(), "load_before": os.getloadavg()[0], "runs": {}}

    def study(name: str, **search) -> Path:
        folder = work / name
        folder.mkdir()
        return write_study(folder, model, device={"threads": 1, "seq_len": 32, "rounds": 8, "warmup": 1},
                           search={"trials": args.trials, "seed": 0, "sampler": "tpe", **search})

    s1 = study("one")
    url1 = str(s1.parent / "study.journal")
    out["runs"]["1 worker, journal"] = {**timed_search(s1, url1, 1), "audit": audit(url1, args.trials)}
    print(out["runs"]["1 worker, journal"], flush=True)
    if "journal" not in args.skip:
        s = study("journal")
        url = str(s.parent / "study.journal")
        out["runs"][f"{args.workers} workers, journal"] = {**timed_search(s, url, args.workers),
                                                          "audit": audit(url, args.trials)}
        print(out["runs"][f"{args.workers} workers, journal"], flush=True)
    if "postgres" not in args.skip:
        reason = unavailable_reason()
        if reason:
            out["runs"][f"{args.workers} workers, PostgreSQL"] = {"skipped": reason}
        else:
            with PostgresServer() as server:
                s = study("pg")
                url = server.create_database("bench")
                out["runs"][f"{args.workers} workers, PostgreSQL"] = {**timed_search(s, url, args.workers),
                                                                     "audit": audit(url, args.trials)}
        print(out["runs"][f"{args.workers} workers, PostgreSQL"], flush=True)
    if "ray" not in args.skip:
        s = study("ray", trials=args.ray_trials)
        out["ray_kill_resume"] = ray_kill_resume(s, args.ray_trials, args.ray_workers)
        print(out["ray_kill_resume"], flush=True)
        local, ray = report_fields(s1, url1), report_fields(s, f"sqlite:///{s.parent / 'study.db'}")
        out["report_fields_equal"] = local == ray
        out["report_fields"] = ray
    (ROOT / "benchmarks" / "scale_out_results.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
