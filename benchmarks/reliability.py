"""Reliability benchmark (issue 6): what survives a kill -9, which broken trials are recorded,
how many fuzzed inputs were tried.

  (a) kill: N studies of 20 trials on a tiny BERT, each killed with SIGKILL at a random moment
      and resumed: finished trials before the kill must all be there, unchanged, after the
      resume; the study must reach 20 finished trials; no orphan trial worker may survive.
  (b) faults: an isolated study whose worker is made to hang, segfault and allocate memory
      without bound (SLIMFORMER_FAULT): each trial recorded failed with its reason, the study
      completes.
  (c) fuzz: the property-based tests in tests/searcher/test_fuzz.py with more examples; counts
      the inputs tried and the tracebacks seen (must be 0).

Run (about 15 minutes on a shared 2-core machine):
    OMP_NUM_THREADS=1 python -m benchmarks.reliability            # all parts
    OMP_NUM_THREADS=1 python -m benchmarks.reliability --parts c  # just one part (others kept)
Writes benchmarks/results/reliability_results.json and benchmarks/results/reliability_results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from slimformer.searcher.testing import build_tiny_model, write_study

from benchmarks.common import RESULTS, ROOT, load_sqlite_study

RESULTS_JSON = RESULTS / "reliability_results.json"
RESULTS_MD = RESULTS / "reliability_results.md"
MARK = "SLIMFORMER_RELIABILITY_RUN"
PART_KEYS = {"a": "kill", "b": "faults", "c": "fuzz"}


def _cli(args, env=None, **kw):
    return [sys.executable, "-m", "slimformer.searcher.cli", *map(str, args)], {**os.environ, **(env or {})}


def _trials(path: Path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    db = path.parent / "study.db"
    if not db.exists():
        return []
    try:
        return load_sqlite_study(db, "study").get_trials(deepcopy=False)
    except Exception:  # noqa: BLE001 - killed before the study was created, or being created
        return []


def _orphans(tag: str) -> list[int]:
    """Processes still alive that were started by the killed search (marked by an env var)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"{MARK}={tag}".encode() in env:
            found.append(int(entry.name))
    return found


def part_kill(model: Path, work: Path, runs: int, trials: int, seed: int) -> dict:
    from optuna.trial import TrialState
    from slimformer.searcher.study.records import counted

    rng = random.Random(seed)
    rows = []
    for i in range(runs):
        isolate = i % 3 == 2  # every third run with the isolated trial worker
        path = write_study(work / f"kill{i}", model, search={"trials": trials, "isolate": isolate, "seed": i})
        # the random moment: after a random number of finished trials (0..trials-2), plus a random
        # 0-3 s, so the kill lands anywhere in the trial phase (mid-trial, mid-write, between trials)
        wait_for = rng.randint(0, trials - 2)
        extra = rng.uniform(0.0, 3.0)
        tag = f"kill{i}-{os.getpid()}"
        cmd, env = _cli(["search", path], {MARK: tag})
        t0 = time.monotonic()
        log = work / f"kill{i}" / "search.stderr"
        with open(log, "w") as err:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        while proc.poll() is None and sum(t.state == TrialState.COMPLETE for t in _trials(path)) < wait_for:
            time.sleep(0.2)
        time.sleep(extra)
        delay = time.monotonic() - t0
        killed = proc.poll() is None
        if killed:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        early_exit = None if killed else proc.returncode  # a search that ended before the kill, and how
        early_line = (log.read_text().strip().splitlines() or [""])[-1][:300] if early_exit else ""
        time.sleep(1.0)
        orphans = _orphans(tag)
        for pid in orphans:  # do not leave them behind even if the check fails
            os.kill(pid, signal.SIGKILL)
        before = {t.number: (t.params, t.values) for t in _trials(path) if t.state == TrialState.COMPLETE}
        running = sum(t.state == TrialState.RUNNING for t in _trials(path))
        cmd, env = _cli(["search", path])
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        after = _trials(path)
        by_number = {t.number: t for t in after}
        lost = [n for n, (params, values) in before.items()
                if n not in by_number or by_number[n].state != TrialState.COMPLETE
                or by_number[n].params != params or by_number[n].values != values]
        finished = sum(counted(t) for t in after)
        rows.append({
            "run": i, "isolate": isolate, "kill_after_s": round(delay, 1), "killed": killed,
            "early_exit": early_exit, "early_exit_line": early_line,
            "aimed_after_trials": wait_for,
            "complete_at_kill": len(before), "running_at_kill": running, "lost": len(lost),
            "orphan_workers": len(orphans), "resume_exit": res.returncode, "finished_after_resume": finished,
            "completed": res.returncode == 0 and finished >= trials,
            "stale_retried": sum("stale" in str(t.user_attrs.get("fail_reason", "")) for t in after),
            "running_after_resume": sum(t.state == TrialState.RUNNING for t in after),
            "wall_s": round(time.monotonic() - t0, 1),
        })
        print(json.dumps(rows[-1]), flush=True)
    return {"runs": rows, "trials": trials, "total_lost": sum(r["lost"] for r in rows),
            "all_completed": all(r["completed"] for r in rows),
            "orphans": sum(r["orphan_workers"] for r in rows)}


def part_faults(model: Path, work: Path) -> dict:
    from optuna.trial import TrialState

    faults = "hang:3,segv:5,oom:7,raise:9"
    trials = 12
    path = write_study(work / "faults", model,
                       search={"trials": trials, "isolate": True, "trial_timeout": 15, "trial_memory_mb": 1500})
    cmd, env = _cli(["search", path], {"SLIMFORMER_FAULT": faults})
    t0 = time.monotonic()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    wall = time.monotonic() - t0
    trials_ = _trials(path)
    failed = {t.number: t.user_attrs.get("fail_reason") for t in trials_ if t.state == TrialState.FAIL}
    starts = [ln for ln in res.stderr.splitlines() if "isolated trial worker started" in ln]
    return {"faults": faults, "trials": trials, "exit": res.returncode, "wall_s": round(wall, 1),
            "complete": sum(t.state == TrialState.COMPLETE for t in trials_), "failed": failed,
            "worker_starts": [ln.split(" in ")[1].split(";")[0] for ln in starts]}


def part_fuzz(examples: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        counts = Path(tmp) / "counts.json"
        env = {**os.environ, "SLIMFORMER_FUZZ_EXAMPLES": str(examples), "SLIMFORMER_FUZZ_COUNT_FILE": str(counts)}
        t0 = time.monotonic()
        res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
                              str(ROOT / "tests" / "searcher" / "test_fuzz.py")],
                             env=env, capture_output=True, text=True, cwd=ROOT, timeout=3600)
        data = json.loads(counts.read_text()) if counts.exists() else {}
    return {"examples_per_test": examples, "pytest_exit": res.returncode, "wall_s": round(time.monotonic() - t0, 1),
            "inputs": data.get("inputs", {}), "total_inputs": sum(data.get("inputs", {}).values()),
            "tracebacks": data.get("tracebacks", 0), "summary": res.stdout.strip().splitlines()[-1:]}


def render(results: dict) -> str:
    lines = ["# Reliability (issue 6)", "",
             f"Machine: {results.get('machine')}. Rerun: `OMP_NUM_THREADS=1 python -m benchmarks.reliability` "
             "(see the script's docstring).", ""]
    k = results.get("kill")
    if k:
        lines += [f"## (a) kill -9 at a random moment, then resume ({len(k['runs'])} studies of {k['trials']} trials)", "",
                  "| run | isolated | killed after s | complete at kill | running at kill | lost | orphan workers "
                  "| resume exit | finished after resume | stale retried | running after resume |", "|" + "---|" * 11]
        for r in k["runs"]:
            note = "" if r["killed"] else f" (had exited: {r.get('early_exit')})"
            lines.append(f"| {r['run']} | {r['isolate']} | {r['kill_after_s']}{note} "
                         f"| {r['complete_at_kill']} | {r['running_at_kill']} | {r['lost']} | {r['orphan_workers']} "
                         f"| {r['resume_exit']} | {r['finished_after_resume']} | {r['stale_retried']} "
                         f"| {r['running_after_resume']} |")
        lines += ["", f"Finished trials lost: **{k['total_lost']}**; every study completed: **{k['all_completed']}**; "
                  f"orphan trial workers after the kill: **{k['orphans']}**. A trial that was running at the kill is "
                  "found on resume (its process is dead), recorded as failed (`stale`) and queued again with the same "
                  "plan.", ""]
        lines += [f"Run {r['run']} ended before the kill with exit {r['early_exit']}: `{r['early_exit_line']}`"
                  for r in k["runs"] if r.get("early_exit")]
        lines += [""] if any(r.get("early_exit") for r in k["runs"]) else []
    f = results.get("faults")
    if f:
        lines += [f"## (b) broken trials in an isolated study (`SLIMFORMER_FAULT={f['faults']}`)", "",
                  f"{f['trials']} trials, `trial_timeout: 15`, `trial_memory_mb: 1500`: exit {f['exit']}, "
                  f"{f['complete']} complete, {len(f['failed'])} failed, {f['wall_s']} s.", "",
                  "| trial | recorded reason |", "|---|---|"]
        lines += [f"| {n} | {reason} |" for n, reason in sorted(f["failed"].items(), key=lambda x: int(x[0]))]
        lines += ["", f"Worker start-ups (first, then one after each killed worker): {', '.join(f['worker_starts'])}.", ""]
    z = results.get("fuzz")
    if z:
        lines += ["## (c) fuzzing (hypothesis, `tests/searcher/test_fuzz.py`)", "",
                  f"{z['examples_per_test']} examples per property; pytest exit {z['pytest_exit']}; {z['wall_s']} s.", "",
                  "| property | inputs tried |", "|---|---|"]
        lines += [f"| {name} | {n} |" for name, n in sorted(z["inputs"].items())]
        lines += ["", f"Total inputs: **{z['total_inputs']}**; tracebacks / internal errors: **{z['tracebacks']}**.", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="a,b,c", help="a (kill), b (faults), c (fuzz)")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--fuzz-examples", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    results = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else {}
    results["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared), " \
                         f"Python {platform.python_version()}"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build_tiny_model(work / "tiny-bert") if parts & {"a", "b"} else None
        os.environ.setdefault("SLIMFORMER_CACHE", str(work / "cache"))
        if "a" in parts:
            results["kill"] = part_kill(model, work, args.runs, args.trials, args.seed)
        if "b" in parts:
            results["faults"] = part_faults(model, work)
            print(json.dumps(results["faults"]), flush=True)
        if "c" in parts:
            results["fuzz"] = part_fuzz(args.fuzz_examples)
            print(json.dumps(results["fuzz"]), flush=True)
    merged = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else {}  # parts run elsewhere meanwhile
    results = {**merged, **{k: v for k, v in results.items() if k == "machine" or k in PART_KEYS.values()
                            and k in {PART_KEYS[p] for p in parts}}}
    RESULTS_JSON.write_text(json.dumps(results, indent=1, sort_keys=True))
    RESULTS_MD.write_text(render(results))
    print(f"written {RESULTS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
