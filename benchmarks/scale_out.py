"""Scale-out check: one study run by 1 worker and by 4 workers (journal file and PostgreSQL),
and by Ray Tune with the driver killed mid-study and resumed. Checks that no trial is lost or
duplicated and that every finished trial's plan and values are stored together; times each run.

Model: the tests' tiny random-init BERT (4 layers, hidden 64) with MiniLM's tokenizer on the
quickstart STS-B files, so each run stays within a few minutes on a 2-core machine.

    OMP_NUM_THREADS=1 python -m benchmarks.scale_out            # writes benchmarks/results/scale_out_results.{md,json}
    OMP_NUM_THREADS=1 python -m benchmarks.scale_out --trials 40 --workers 4 --ray-trials 20

`--quickstart` measures whether parallel trials still measure the device the study names (issue 26):
the quickstart (studies/quickstart.yaml, MiniLM, on a fresh copy of studies/ with an empty cache) at
the budget given, by 1 local worker, 2 local workers and Ray with 2 workers (local Ray), same seed
and trial count, each on a journal file. Per run: wall time of `slimformer search`, trials/hour, and
for every feasible trial its search speedup against a re-timing of ALL the run's feasible trials
afterwards (searcher/report/retime.py: one fresh interleaved measurement of device.max_rounds rounds,
nothing else running), the runtime it chose, whether it holds re-timed, and its timing-lock wait.
Runs are merged into benchmarks/results/scale_out_quickstart_results.json (so each backend may be run on its
own, under the shared lock, each under 15 minutes):

    flock /tmp/slimformer-timing.lock python -m benchmarks.scale_out --quickstart --trials 6 --budget 2.0
    flock /tmp/slimformer-timing.lock python -m benchmarks.scale_out --quickstart --trials 6 --budget 2.0 --runs ray2
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

from slimformer.searcher.testing import PostgresServer, build_tiny_model, unavailable_reason, write_study

from benchmarks.common import RESULTS, ROOT


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


QS_RUNS = {"local1": ("1 local worker", 1, "local"), "local2": ("2 local workers", 2, "local"),
           "ray2": ("Ray, 2 workers (local Ray)", 2, "ray")}
QS_OUT = RESULTS / "scale_out_quickstart_results"


def retime_all(folder: str, storage: str) -> None:
    """(In a subprocess, cwd = the repository, `folder` = a fresh copy's folder.) Re-time every feasible
    trial of the study in one fresh interleaved measurement; print JSON: the search's own re-timing and
    this one."""
    from slimformer.searcher.config import load_study_config
    from slimformer.searcher.problem.workbench import Workbench
    from slimformer.searcher.report.retime import RETIMED_ATTR, retime
    from slimformer.searcher.study.records import feasible_trials, handle_for, open_study

    from benchmarks.common import STUDY

    cfg = load_study_config(Path(folder) / STUDY)
    study = open_study(handle_for(cfg, storage), read_only=False)
    searched = study.user_attrs.get(RETIMED_ATTR)
    feasible = feasible_trials(study)
    again = {}
    if feasible:
        bench = Workbench(cfg, log=lambda msg: None)
        again = retime(study, bench, lambda msg: print(msg, file=sys.stderr), k=len(feasible))
    print(json.dumps({"search_retimed": searched, "rounds": max(cfg.device.rounds, cfg.device.max_rounds),
                      "retimed": {n: {"speedup": r.speedup, "low": r.low, "holds": r.holds} for n, r in again.items()}}))


def quickstart_run(key: str, args, work: Path) -> dict:
    from statistics import median

    from optuna.trial import TrialState

    from benchmarks.common import STUDY, fresh_copy, slimformer

    label, workers, backend = QS_RUNS[key]
    folder = work / key
    env = fresh_copy(folder, speedup=args.budget)
    storage = str(folder / "studies" / "quickstart.journal")
    log = work / f"{key}.log"
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    code, _ = slimformer("search", STUDY, "--trials", args.trials, "--seed", args.seed, "--storage", storage,
                         "--workers", workers, "--backend", backend, cwd=folder, env=env, log=log)
    wall = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"{label}: search failed (exit {code}); see {log}")
    t1 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "benchmarks.scale_out", "--retime-all", str(folder), storage],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{label}: re-timing failed: {res.stderr[-2000:]}")
    again = json.loads(res.stdout.strip().splitlines()[-1])
    study = load(storage, "quickstart")
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    rows = []
    for t in done:
        a = t.user_attrs
        r = again["retimed"].get(str(t.number))
        rows.append({"trial": t.number, "feasible": a.get("feasible"), "quality": round(t.values[0], 4),
                     "runtime": a.get("runtime"), "search_speedup": round(a["speedup"], 3),
                     "search_low": round(a.get("speedup_low") or a["speedup"], 3),
                     "retimed_speedup": None if r is None else round(r["speedup"], 3),
                     "retimed_low": None if r is None else round(r["low"], 3),
                     "holds": None if r is None else r["holds"],
                     "search_over_retimed": None if r is None else round(a["speedup"] / r["speedup"], 3),
                     "timing_wait_s": a.get("timing_wait_s"), "timing_threads": a.get("timing_threads"),
                     "pid": a.get("pid")})
    timed = [r for r in rows if r["retimed_speedup"] is not None]
    runtimes: dict = {}
    for r in rows:
        runtimes[r["runtime"]] = runtimes.get(r["runtime"], 0) + 1
    return {"label": label, "workers": workers, "backend": backend, "wall_s": round(wall, 1),
            "retime_s": round(time.perf_counter() - t1, 1),
            "trials_per_hour": round(len(done) * 3600 / wall, 1), "complete": len(done),
            "failed": sum(t.state == TrialState.FAIL for t in study.get_trials()),
            "feasible": len(timed), "hold": sum(bool(r["holds"]) for r in timed),
            "median_search_over_retimed": round(median(r["search_over_retimed"] for r in timed), 3) if timed else None,
            "median_abs_error": round(median(abs(r["search_over_retimed"] - 1) for r in timed), 3) if timed else None,
            "runtimes": runtimes, "processes": len({r["pid"] for r in rows}) if backend == "local" else None,
            "timing_wait_s_total": round(sum(r["timing_wait_s"] or 0 for r in rows), 1),
            "load_before": round(load0, 2), "load_after": round(os.getloadavg()[0], 2),
            "search_retimed": again["search_retimed"], "retime_rounds": again["rounds"], "trials": rows}


def quickstart_md(out: dict) -> None:
    from benchmarks.common import write_md

    lines = ["# Scale out on the quickstart: do parallel trials measure the study's device?", "",
             f"({out['cpu']}.)", "",
             "Command (each run under the shared timing lock):", "", "```bash",
             *[f"flock /tmp/slimformer-timing.lock python -m benchmarks.scale_out --quickstart --trials "
               f"{r['trials_asked']} --budget {r['budget']} --seed {r['seed']} --runs {k}" for k, r in out["runs"].items()],
             "```", "",
             "The quickstart (MiniLM, STS-B, device.runtime auto, 2 threads, batch 1 x 128 tokens) on a fresh copy "
             "of studies/ with an empty cache, budget.speedup replaced; every run on a journal file. After each "
             "search, ALL its feasible trials are re-timed in one fresh interleaved measurement "
             "(searcher/report/retime.py) with nothing else of the study running.", "",
             "| run | trials | wall | trials/hour | feasible | hold re-timed | median search/re-timed | median abs. error "
             "| runtimes chosen | lock wait (all trials) | load avg before/after |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |"]
    for r in out["runs"].values():
        rts = ", ".join(f"{k} {v}" for k, v in sorted(r["runtimes"].items()))
        lines.append(f"| {r['label']} | {r['complete']} | {r['wall_s']} s | {r['trials_per_hour']} | {r['feasible']} | "
                     f"{r['hold']} | {r['median_search_over_retimed']} | {r['median_abs_error']} | {rts} | "
                     f"{r['timing_wait_s_total']} s | {r['load_before']} / {r['load_after']} |")
    for r in out["runs"].values():
        lines += ["", f"## {r['label']} (budget {r['budget']}x, seed {r['seed']})", "",
                  "| trial | feasible | quality | runtime | search speedup (low) | re-timed (low) | holds | search/re-timed "
                  "| timed at threads | lock wait |", "| ---: | --- | ---: | --- | --- | --- | --- | ---: | ---: | ---: |"]
        for t in r["trials"]:
            again = "-" if t["retimed_speedup"] is None else f"{t['retimed_speedup']} ({t['retimed_low']})"
            lines.append(f"| {t['trial']} | {t['feasible']} | {t['quality']} | {t['runtime']} | {t['search_speedup']} "
                         f"({t['search_low']}) | {again} | {'-' if t['holds'] is None else t['holds']} | "
                         f"{t['search_over_retimed'] or '-'} | {t['timing_threads']} | {t['timing_wait_s']} s |")
    write_md(str(QS_OUT), lines, out.get("note"))


def quickstart(args) -> None:
    from slimformer.searcher.devices.latency import device_facts

    path = QS_OUT.with_suffix(".json")
    out = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    facts = device_facts(2)
    info = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in
                                               Path("/proc/cpuinfo").read_text().splitlines()[:12] if ":" in line)}
    family = f" (family {info.get('cpu family', '?')} model {info.get('model', '?')})"
    out.update(cpu=facts["cpu"] + family, flags=facts["flags"], cores=facts["cores"])
    work = Path(tempfile.mkdtemp(prefix="scale-out-qs-"))
    for key in args.runs:
        run = quickstart_run(key, args, work)
        out["runs"][key] = {**run, "trials_asked": args.trials, "budget": args.budget, "seed": args.seed}
        print(json.dumps({k: v for k, v in run.items() if k not in ("trials", "search_retimed")}), flush=True)
        path.write_text(json.dumps(out, indent=2) + "\n")
    quickstart_md(out)


def main() -> None:
    if sys.argv[1:2] == ["--retime-all"]:
        return retime_all(sys.argv[2], sys.argv[3])
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--ray-trials", type=int, default=20)
    ap.add_argument("--ray-workers", type=int, default=2)
    ap.add_argument("--skip", nargs="*", default=(), choices=("journal", "postgres", "ray"))
    ap.add_argument("--quickstart", action="store_true", help="the quickstart by 1 and 2 local workers and Ray")
    ap.add_argument("--budget", type=float, default=2.0, help="--quickstart: budget.speedup")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", nargs="*", default=list(QS_RUNS), choices=list(QS_RUNS))
    args = ap.parse_args()
    if args.quickstart:
        return quickstart(args)
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
    (RESULTS / "scale_out_results.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
