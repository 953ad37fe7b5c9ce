"""Samplers compared on the same study and budget: TPE, NSGA-II, GP and random.

    python -m benchmarks.samplers        # writes benchmarks/results/samplers_results.{md,json}

The study: all-MiniLM-L6-v2 on STS-B dev, the default space restricted to magnitude importance
(per-layer heads, FFN, bits 32/8, depth), budget speedup >= 2.0. So that the comparison measures
the samplers and not the machine's noise, and fits in minutes, every trial's objective is
deterministic: quality = Spearman x100 on a fixed subset (--pairs, default 300) of STS-B dev, computed on
the really compressed model and cached by plan (samplers that propose the same plan share the
figure); latency = the device profile's prediction (searcher.cost.costmodel) for this CPU, batch 1,
128 tokens, 2 threads. Hypervolume of the feasible front in (quality, latency) with reference
point (baseline quality - 20, baseline latency), after 15, 30 and 60 trials, 3 seeds each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import optuna
from slimformer.methods import Plan
from slimformer.methods.adapters import get_adapter
from slimformer.searcher.config import load_study_config
from slimformer.searcher.cost.costmodel import compile_profile, predict
from slimformer.searcher.cost.profile import default_profile_path, find_profile, profile_device, save_profile
from slimformer.searcher.problem.workbench import Workbench
from slimformer.spaces import Space

from benchmarks.common import RESULTS

ROOT = Path(__file__).resolve().parents[1]
SAMPLERS = ("tpe", "nsga2", "gp", "random")
CHECKPOINTS = (15, 30, 60)


def make_sampler(name: str, seed: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "tpe": lambda: optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=8),
            "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed, population_size=10),
            "gp": lambda: optuna.samplers.GPSampler(seed=seed, n_startup_trials=8),
            "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        }[name]()


def hypervolume(points: list[tuple[float, float]], ref_q: float, ref_ms: float) -> float:
    """Area dominated by (quality up, latency down) points relative to (ref_q, ref_ms)."""
    pts = sorted((ms, q) for q, ms in points if q > ref_q and ms < ref_ms)
    area, best_q = 0.0, ref_q
    for i, (ms, q) in enumerate(pts):
        best_q = max(best_q, q)
        nxt = pts[i + 1][0] if i + 1 < len(pts) else ref_ms
        area += (nxt - ms) * (best_q - ref_q)
    return area


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=300, help="STS-B dev pairs scored per plan")
    ap.add_argument("--samplers", default=",".join(SAMPLERS), help="comma-separated subset (to run in parallel)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for building/scoring")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="only merge the JSON results of parallel runs")
    ap.add_argument("--out", default=str(RESULTS / "samplers_results"))
    args = ap.parse_args()
    if args.merge:
        parts = [json.loads(Path(p).read_text()) for p in args.merge]
        results = {k: v for part in parts for k, v in part["runs"].items()}
        meta = dict(parts[0]["meta"], unique_plans=sum(p["meta"]["unique_plans"] for p in parts),
                    total_s=max(p["meta"]["total_s"] for p in parts))
        Path(args.out + ".json").write_text(json.dumps({"meta": meta, "runs": results}, indent=1))
        Path(args.out + ".md").write_text(render(results, meta, args.seeds))
        print(render(results, meta, args.seeds))
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = load_study_config(ROOT / "studies" / "quickstart.yaml")
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"validation_size": args.pairs}),
                                 "device": cfg.device.model_copy(update={"threads": args.threads})})
    bench = Workbench(cfg, log=print)
    shape = get_adapter(bench.model).shape()
    space = Space.from_dict({"heads": {"fractions": [0.25, 0.5, 0.75, 1.0]}, "ffn": {"fractions": [0.25, 0.5, 0.75, 1.0]},
                             "depth": {"min_fraction": 0.5}, "bits": [32, 8]}, shape)
    profile = find_profile(2, "eager")  # latency is predicted for the 2-thread device
    if profile is None:
        profile = profile_device(2, "eager")
        save_profile(profile, default_profile_path(2, "eager"))
    cp = compile_profile(profile)
    base_ms = predict(Plan(), bench.model.config, cp)["latency_ms"]
    base_q = bench.quality(bench.model)["quality"]
    cache: dict[str, float] = {}

    def objective(trial):
        plan = space.sample(trial)
        key = plan.to_json()
        if key not in cache:
            cache[key] = bench.quality(bench.build(plan))["quality"]
        ms = predict(plan, bench.model.config, cp)["latency_ms"]
        trial.set_constraint("speedup", 2.0 - base_ms / ms)
        trial.set_user_attr("feasible", base_ms / ms >= 2.0)
        return cache[key], ms

    results = {}
    t_start = time.time()
    for name in args.samplers.split(","):
        for seed in range(args.seeds):
            study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(name, seed))
            t0 = time.time()
            study.optimize(objective, n_trials=args.trials)
            trials = study.trials
            row = {"wall_s": time.time() - t0}
            for n in CHECKPOINTS:
                feas = [(t.values[0], t.values[1]) for t in trials[:n] if t.user_attrs["feasible"]]
                row[f"hv@{n}"] = hypervolume(feas, base_q - 20, base_ms)
                row[f"best@{n}"] = max((q for q, _ in feas), default=None)
            results[f"{name}/{seed}"] = row
            print(name, seed, {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    meta = {"pairs": args.pairs, "baseline_quality": base_q, "baseline_predicted_ms": base_ms, "unique_plans": len(cache),
            "total_s": time.time() - t_start, "device": bench.facts()}
    Path(args.out + ".json").write_text(json.dumps({"meta": meta, "runs": results}, indent=1))
    Path(args.out + ".md").write_text(render(results, meta, args.seeds))
    print(render(results, meta, args.seeds))


def render(results: dict, meta: dict, seeds: int) -> str:
    lines = ["# Samplers on the same study and budget", "",
             "Command: `python -m benchmarks.samplers` (or two halves in parallel with `--samplers`, then "
             "`--merge`). Study: all-MiniLM-L6-v2, STS-B dev "
             f"({meta['pairs']}-pair subset), "
             "space = per-layer heads/FFN (fractions 0.25-1), depth >= 3, bits 32/8, magnitude importance; "
             "budget speedup >= 2.0 (cost-model latency for this CPU). "
             f"Baseline Spearman {meta['baseline_quality']:.2f}, predicted {meta['baseline_predicted_ms']:.1f} ms. "
             f"{meta['unique_plans']} distinct plans built and scored; total {meta['total_s'] / 60:.1f} min. "
             f"Device: {meta['device']['cpu']}, {meta['device']['threads']} threads.",
             "", "Mean over seeds (min-max); hv = hypervolume of the feasible front (Spearman points x ms), "
             "best = best feasible Spearman.", "",
             "| sampler | " + " | ".join(f"hv@{n} | best@{n}" for n in CHECKPOINTS) + " |",
             "| --- | " + " | ".join("---: | ---:" for _ in CHECKPOINTS) + " |"]
    for name in SAMPLERS:
        runs = [results[f"{name}/{s}"] for s in range(seeds) if f"{name}/{s}" in results]
        if not runs:
            continue
        cells = []
        for n in CHECKPOINTS:
            for key in (f"hv@{n}", f"best@{n}"):
                vals = [r[key] for r in runs if r[key] is not None]
                cells.append(f"{statistics.mean(vals):.1f} ({min(vals):.1f}-{max(vals):.1f})" if vals else "none")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
