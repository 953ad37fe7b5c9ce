"""Feasibility first (issue 25): does the quickstart find a feasible plan early whenever its space
holds one, and refuse a budget it cannot reach within the first minute?

For each budget and seed: a fresh copy of studies/ (benchmarks/common.py: an empty cache, no device
profile) with the copy's budget.speedup set to the budget, then `slimformer search
studies/quickstart.yaml --seed N [--trials T]` (wall time). From the search's log: the smallest plan's
speedup measured at the start (step 0 of the size axis, searcher/study/edge.py) and the edge it
queued; from the study: the number of the first feasible trial (or none) and how many trials were
feasible; or, for a refused budget, its one-line refusal and how long it took.

Results are kept in feasibility_results.json by run ("4x seed 0, 6 trials"); a run already there
is skipped (`--redo` runs it again).

    flock /tmp/slimformer-timing.lock python -m benchmarks.feasibility --budgets 2.5 5 8 --seeds 0 --trials 6
    python -m benchmarks.feasibility --report-only
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import time
from pathlib import Path

from benchmarks.common import RESULTS, ROOT, STUDY, fresh_copy, load_sqlite_study, slimformer, write_md

OUT = RESULTS / "feasibility_results"
RUNS = ROOT / "runs" / "feasibility"


def key(budget: float, seed: int, trials: int | None) -> str:
    return f"{budget:g}x seed {seed}, " + (f"{trials} trials" if trials else "shipped trial count")


def one_run(budget: float, seed: int, trials: int | None) -> dict:
    from optuna.trial import TrialState

    folder = RUNS / f"{budget:g}x-seed{seed}" / ""
    env = fresh_copy(folder, speedup=budget)
    log = folder / "search.log"
    args = ["search", STUDY, "--seed", seed, *(["--trials", trials] if trials else [])]
    t0 = time.monotonic()
    code, out = slimformer(*args, cwd=folder, env=env, log=log)
    wall = time.monotonic() - t0
    text = log.read_text() + "\n" + out  # the progress (stderr) and what the search printed
    axis = re.search(r"size axis .*?step 0: ([0-9.]+)x \[([0-9.]+), ([0-9.]+)\]", text)
    edge = re.search(r"budget edge: (.*)", text)
    row = {"budget": budget, "seed": seed, "trials": trials, "exit": code, "wall_s": round(wall, 1),
           "smallest": float(axis.group(1)) if axis else None,
           "smallest_low": float(axis.group(2)) if axis else None,
           "smallest_high": float(axis.group(3)) if axis else None,
           "edge": edge.group(1).strip() if edge else None}
    if code != 0:
        lines = [ln for ln in log.read_text().strip().splitlines() if ln.strip()]
        row["error"] = lines[-1] if lines else ""
        return row
    db = next((folder / "studies").glob("*.db"))
    study = load_sqlite_study(db, Path(STUDY).stem)
    done = sorted((t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE),
                  key=lambda t: t.number)
    feasible = [t for t in done if t.user_attrs.get("feasible")]
    row.update({"finished": len(done), "feasible": len(feasible),
                "first_feasible": feasible[0].number if feasible else None,
                "first_feasible_position": done.index(feasible[0]) if feasible else None,
                "seeded": [t.user_attrs.get("seeded") for t in done],
                "speedups": [round(t.user_attrs.get("speedup_low") or t.user_attrs["speedup"], 2) for t in done],
                "best_quality": max((t.values[0] for t in feasible), default=None)})
    return row


def cpu_line() -> str:
    info = open("/proc/cpuinfo").read().splitlines()
    field = {ln.split(":", 1)[0].strip(): ln.split(":", 1)[1].strip() for ln in reversed(info) if ":" in ln}
    have = set(field.get("flags", "").split())
    flags = [f for f in ("avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile",
                         "amx_int8", "amx_bf16") if f in have]
    cores = sum(ln.startswith("processor") for ln in info)
    return (f"CPU: {field.get('model name', '?')} (family {field.get('cpu family')}, model {field.get('model')}), "
            f"{cores} cores; ISA flags: {' '.join(flags) or 'none of the listed'}"
            + ("" if "amx_tile" in have else " (no AMX)"))


def report(results: dict, note: str | None) -> None:
    lines = ["# Feasibility first: the quickstart's first feasible trial per budget", "",  # write_md adds the CPU
             "`flock /tmp/slimformer-timing.lock python -m benchmarks.feasibility --budgets ... --seeds ... "
             "--trials N`: the shipped `studies/quickstart.yaml` from a fresh copy of `studies/` (empty cache, no "
             "device profile) with only budget.speedup changed; the search as a new user runs it. The smallest "
             "plan's speedup is what the start-up measurement gave (its median paired ratio, [lower bound at "
             "budget.confidence, upper end of the measured spread]); a trial is feasible when its lower bound "
             "holds the budget. Trial positions count finished trials from 0.", "",
             "| run | smallest plan (start-up) | edge queued | exit | first feasible trial | feasible / finished "
             "| speedups (lower bounds) of the trials, in order | wall time |",
             "| --- | --- | --- | ---: | ---: | ---: | --- | ---: |"]
    for name, r in results.items():
        if name.startswith("_"):
            continue
        small = "-" if r["smallest"] is None else f"{r['smallest']:.2f}x [{r['smallest_low']:.2f}, {r['smallest_high']:.2f}]"
        if r["exit"] != 0:
            name = f"{name} ({r['commit']})" if r.get("commit") else name
            lines.append(f"| {name} | {small} | - | {r['exit']} | refused: `{r.get('error', '')}` | - | - | "
                         f"{r['wall_s']:.0f} s |")
            continue
        name = f"{name} ({r['commit']})" if r.get("commit") else name
        first = "none" if r["first_feasible"] is None else f"#{r['first_feasible_position']}"
        seeds = ", ".join(f"{s}{'*' if sd else ''}" for s, sd in zip(r["speedups"], r["seeded"]))
        lines.append(f"| {name} | {small} | {r['edge'] or '-'} | 0 | {first} | {r['feasible']} / {r['finished']} | "
                     f"{seeds} | {r['wall_s'] / 60:.1f} min |")
    lines += ["", "`*`: a seeded trial (the edge plans first, then the uniform plans)."]
    write_md(str(OUT), lines, note)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", type=float, nargs="+", default=[2.5, 3, 3.5, 4, 5])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--trials", type=int, default=None, help="stop each search after N trials (default: the study's)")
    ap.add_argument("--redo", action="store_true")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--note", default=None)
    args = ap.parse_args(argv)
    path = OUT.with_suffix(".json")
    results = json.loads(path.read_text()) if path.exists() else {}
    if not args.report_only:
        results["_cpu"] = cpu_line()
        results["_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                            text=True).stdout.strip()
        for budget in args.budgets:
            for seed in args.seeds:
                name = key(budget, seed, args.trials)
                if name in results and not args.redo:
                    continue
                results[name] = {**one_run(budget, seed, args.trials), "commit": results["_commit"]}
                print(json.dumps({name: results[name]}), flush=True)
                path.write_text(json.dumps(results, indent=1) + "\n")
    report(results, args.note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
