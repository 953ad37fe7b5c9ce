"""Does what runs between two timed calls change a speedup? One candidate, several timing contexts.

A trial of a finished study is rebuilt from its plan and each of its runtimes' runners is timed
against the study's baseline (stock float32 PyTorch) in interleaved rounds (order alternating
each round, as searcher/devices/latency.py does), in these contexts:
- "alone": the baseline and one runtime's runner (what a fresh process timing one artifact does);
- "with the others": the baseline and every runtime's runner of the candidate in the same rounds
  (what `device.runtime: auto` does for every trial);
each with the machine left idle for G ms before every call (G = 0, how the project timed before
IDLE_GAP_MS; 5, 10 = IDLE_GAP_MS; 50): the previous runner's threads settle, caches and clocks cool.
Every context is measured --reps times, the contexts alternating, --rounds rounds each.

    python -m benchmarks.interleaving runs/repeatability/seed0-finish-3.5x/studies/quickstart.yaml --trial 15
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

warnings.simplefilter("ignore")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.common import RESULTS, write_md  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = RESULTS / "interleaving_results"
GAPS_MS = (0, 5, 10, 50)  # 0: how the project timed until IDLE_GAP_MS


def speedups(runners: dict, rounds: int, gap_ms: float) -> dict[str, float]:
    """Each runner's speedup over "baseline" in interleaved rounds (searcher/devices/latency.py: the
    median of per-round ratios), `gap_ms` idle before each call."""
    from slimformer.searcher.devices.latency import measure_latency

    lat = measure_latency(runners, baseline="baseline", rounds=rounds, warmup=2, gap_ms=gap_ms)
    return {name: res.speedup for name, res in lat.items() if name != "baseline"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", help="a study file whose storage holds a finished search")
    ap.add_argument("--trial", type=int, required=True)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    started = time.time()
    import optuna
    from slimformer.methods import Plan
    from slimformer.searcher.config import load_study_config
    from slimformer.searcher.problem.workbench import Workbench
    from slimformer.searcher.study.records import handle_for, open_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = load_study_config(args.study)
    study = open_study(handle_for(cfg, None, None), read_only=True)
    bench = Workbench(cfg, log=lambda msg: None)
    bench.adopt(study.user_attrs["baseline"])
    trial = study.trials[args.trial]
    plan = Plan.from_dict(trial.user_attrs["plan"])
    runners = bench.runners_for(bench.build(plan), plan)
    baseline = bench.baseline_runner  # stock float32 PyTorch, as every timing of the study uses it
    contexts: dict[str, list[dict]] = {}
    for rep in range(args.reps):
        print(f"rep {rep + 1}/{args.reps} ...", file=sys.stderr, flush=True)
        for gap in GAPS_MS:
            for rt, fn in runners.items():
                contexts.setdefault(f"{rt} alone, idle gap {gap} ms", []).append(
                    speedups({"baseline": baseline, rt: fn}, args.rounds, gap))
            together = speedups({"baseline": baseline, **runners}, args.rounds, gap)
            for rt in runners:
                contexts.setdefault(f"{rt} with the others, idle gap {gap} ms", []).append({rt: together[rt]})
    rows = {name: [next(iter(r.values())) for r in reps] for name, reps in contexts.items()}
    res = {"study": args.study, "trial": args.trial, "rounds": args.rounds, "reps": args.reps,
           "search_speedup": trial.user_attrs.get("speedup"), "search_runtime": trial.user_attrs.get("runtime"),
           "runtime_speedups": trial.user_attrs.get("runtime_speedups"), "speedups": rows,
           "load_average": list(os.getloadavg())}
    OUT.with_suffix(".json").write_text(json.dumps(res, indent=1))
    lines = ["# Timing context: one candidate's speedup as measured beside different runners", "",
             f"`python -m benchmarks.interleaving {args.study} --trial {args.trial}`: trial {args.trial}'s plan rebuilt, "
             f"each runtime's runner timed against stock float32 PyTorch, {args.rounds} interleaved rounds per "
             f"measurement, {args.reps} measurements per context, the contexts alternating. In the search it "
             f"measured {res['search_speedup']:.2f}x in {res['search_runtime']} (timed with the other runtimes).", "",
             "| context | speedup per measurement | median |", "|---|---|---:|"]
    for name, xs in rows.items():
        lines.append(f"| {name} | {', '.join(f'{x:.2f}x' for x in xs)} | {statistics.median(xs):.2f}x |")
    write_md(str(OUT), lines, f"{(time.time() - started) / 60:.1f} min; load average "
             f"{' / '.join(f'{x:.1f}' for x in res['load_average'])} at the end; nothing else running.")


if __name__ == "__main__":
    main()
