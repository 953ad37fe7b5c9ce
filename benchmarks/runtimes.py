"""Eager PyTorch vs ONNX Runtime for all-MiniLM-L6-v2 (batch 1, 128 tokens, 2 threads): the baseline,
the all-int8 plan and heads 6 + FFN 768 + int8, timed in interleaved rounds in one process
(`measure_latency` over both runtimes' runners: ratios are paired per round); the int8 quality
difference between torch.ao and ORT int8 kernels on an STS-B slice; and the cost model's error
with a quick ORT profile on random plans.

Rerun: OMP_NUM_THREADS=2 python -m benchmarks.runtimes   (writes benchmarks/results/runtimes_results.md)
"""

from __future__ import annotations

import json
import os
import random
import statistics
import time
import warnings
from pathlib import Path

warnings.simplefilter("ignore")

import torch  # noqa: E402
from slimformer.methods import Plan  # noqa: E402
from slimformer.searcher.config import load_study_config  # noqa: E402
from slimformer.searcher.cost.costmodel import predict  # noqa: E402
from slimformer.searcher.cost.profile import profile_device  # noqa: E402
from slimformer.searcher.devices.latency import measure_latency  # noqa: E402
from slimformer.searcher.devices.onnxruntime import ort_runner  # noqa: E402
from slimformer.searcher.problem.workbench import Workbench  # noqa: E402

from benchmarks.common import RESULTS  # noqa: E402

HERE = Path(__file__).resolve().parent
THREADS, ROUNDS, N_PLANS = 2, 20, int(os.environ.get("N_PLANS", 12))


def load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    started, load_start = time.time(), load()
    cfg = load_study_config(data={"model": "minilm-l6", "device": {"runtime": "onnxruntime", "threads": THREADS},
                                  "data": {"validation": str(HERE.parent / "studies/data/sts-dev.tsv"), "format": "tsv",
                                           "header": False, "names": ["genre", "file", "year", "id", "score",
                                                                      "sentence1", "sentence2"],
                                           "validation_size": 100, "batch_size": 50}})
    bench = Workbench(cfg, log=lambda m: None)
    plans = {"baseline": Plan(), "int8": Plan(bits=8), "heads 6 + FFN 768 + int8": Plan(heads=6, ffn=768, bits=8)}
    runners, models = {}, {}
    for name, plan in plans.items():
        models[name] = bench.model if name == "baseline" else bench.build(plan)
        runners[f"{name} | eager"] = bench.runner(models[name], "eager")
        runners[f"{name} | onnxruntime"] = bench.runner(models[name], "onnxruntime")
    lat = measure_latency(runners, baseline="baseline | eager", rounds=ROUNDS, warmup=3, threads=THREADS)
    base_ort = lat["baseline | onnxruntime"].samples_ms
    rows = []
    for key, r in lat.items():
        name, rt = key.split(" | ")
        same = lat[f"{name} | eager"].samples_ms
        ort_vs_eager = statistics.median(e / o for e, o in zip(same, lat[f"{name} | onnxruntime"].samples_ms))
        rows.append({"plan": name, "runtime": rt, "median_ms": r.median_ms, "p10_ms": r.p10_ms, "p90_ms": r.p90_ms,
                     "speedup_vs_eager_baseline": r.speedup,
                     "speedup_vs_ort_baseline": statistics.median(b / c for b, c in zip(base_ort, r.samples_ms)),
                     "ort_over_eager_same_plan": ort_vs_eager})
    # quality: torch.ao int8 vs ORT int8 on the same weights (200 STS-B pairs)
    quality = {}
    for name in ("int8", "heads 6 + FFN 768 + int8"):
        torch_q = bench.quality(models[name])["quality"]
        ort_q = ort_quality(bench, models[name])
        quality[name] = {"torch": torch_q, "onnxruntime": ort_q}
    # cost model with a quick ORT profile
    t0 = time.time()
    profile = profile_device(THREADS, "onnxruntime", hidden_sizes=(384,), quick=True, progress=False, tokens=(64, 128))
    prof_s = time.time() - t0
    rng = random.Random(0)
    errors = []
    for _ in range(N_PLANS):
        n_layers = rng.randint(3, 6)
        plan = Plan(layers=sorted(rng.sample(range(6), n_layers)), heads=rng.choice([3, 6, 9, 12]),
                    ffn=rng.choice([384, 768, 1152, 1536]), bits=rng.choice([32, 8]))
        run = bench.runner(bench.build(plan, structure_only=True))
        ms = measure_latency({"p": run}, rounds=7, warmup=2, threads=THREADS)["p"].median_ms
        pred = predict(plan, bench.model.config, profile, 128, 1)["latency_ms"]
        errors.append({"plan": plan.to_dict(), "measured_ms": ms, "predicted_ms": pred, "error": pred / ms - 1})
    write(rows, quality, errors, prof_s, bench.facts(), load_start, time.time() - started)


def ort_quality(bench, model) -> float:
    """The sentence-similarity score with every forward pass run by an ORT session (shape per batch)."""
    import numpy as np
    from scipy.stats import spearmanr
    from slimformer.methods.distill import mean_pool

    sims, gold = [], []
    for b in bench.validation:
        embs = []
        for side in ("a", "b"):
            run, sess = ort_runner(model, b[side], THREADS)
            out = torch.from_numpy(run()[0])
            embs.append(mean_pool(out, b[side]["attention_mask"]))
        sims.append(torch.nn.functional.cosine_similarity(*embs).numpy())
        gold.append(b["score"].numpy())
    return float(spearmanr(np.concatenate(sims), np.concatenate(gold)).statistic * 100)


def write(rows, quality, errors, prof_s, facts, load_start, seconds) -> None:
    (RESULTS / "runtimes_results.json").write_text(json.dumps(
        {"latency": rows, "quality": quality, "costmodel": errors, "device": facts}, indent=1, default=str))
    mape = statistics.mean(abs(e["error"]) for e in errors) * 100 if errors else float("nan")
    lines = [
        "# Runtimes: eager PyTorch vs ONNX Runtime (all-MiniLM-L6-v2)", "",
        "Command: `OMP_NUM_THREADS=2 python -m benchmarks.runtimes` (one run, "
        f"{seconds / 60:.1f} min). Batch 1, 128 tokens, {THREADS} threads; {ROUNDS} interleaved rounds of all six "
        "runners in one process; speedups are medians of per-round ratios (paired, so load hits both sides).",
        f"Device: {facts.get('cpu')}, {facts.get('cores')} cores, torch {facts.get('torch')}, onnxruntime "
        f"{facts.get('onnxruntime')}. Load average (1/5/15 min): "
        f"{load_start} at start, {load()} at the end; absolute milliseconds move with machine load, paired ratios much less.",
        "", "| plan | runtime | median ms | p10-p90 ms | speedup vs eager baseline | vs same-runtime baseline "
        "| ORT over eager, same plan |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['plan']} | {r['runtime']} | {r['median_ms']:.1f} | {r['p10_ms']:.1f}-{r['p90_ms']:.1f} | "
                     f"{r['speedup_vs_eager_baseline']:.2f}x | "
                     f"{r['speedup_vs_ort_baseline' if r['runtime'] == 'onnxruntime' else 'speedup_vs_eager_baseline']:.2f}x | "
                     f"{r['ort_over_eager_same_plan']:.2f}x |")
    lines += ["", "Quality (STS-B dev, 100 pairs of the search split, Spearman x100) of the same weights with "
              "torch.ao int8 kernels vs ORT int8 kernels (ORT: uint8 asymmetric activations, per-channel int8 weights):",
              "", "| plan | torch (eager) | onnxruntime | difference |", "|---|---|---|---|"]
    for name, q in quality.items():
        lines.append(f"| {name} | {q['torch']:.2f} | {q['onnxruntime']:.2f} | {q['onnxruntime'] - q['torch']:+.2f} |")
    lines += ["", f"Cost model with an ORT profile (`profile_device(2, 'onnxruntime', quick=True, tokens=(64, 128))`, "
              f"{prof_s:.0f} s) on {len(errors)} random plans (3-6 layers, heads 3-12, FFN 384-1536, bits 32/8), "
              f"each measured in ORT (7 rounds, median): MAPE {mape:.1f}%.", "",
              "| layers | heads | FFN | bits | measured ms | predicted ms | error |", "|---|---|---|---|---|---|---|"]
    for e in errors:
        p = e["plan"]
        lines.append(f"| {len(p['layers']) if p.get('layers') is not None else 6} | {p['heads']} | {p['ffn']} | "
                     f"{p['bits']} | {e['measured_ms']:.1f} | {e['predicted_ms']:.1f} | {e['error'] * 100:+.0f}% |")
    (RESULTS / "runtimes_results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
