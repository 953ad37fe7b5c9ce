"""Compression core on all-MiniLM-L6-v2 / STS-B dev: params, size, measured latency, speedup
and Spearman for the reference plans, magnitude vs fisher importance side by side.

    python -m benchmarks.compression_table            # writes benchmarks/results/compression_results.{md,json}

Latency: batch 1, 128 tokens, 2 threads; every model timed in the same interleaved rounds
(searcher.devices.latency.measure_latency), median and p10-p90 spread; speedup is the median of
per-round ratios against the uncompressed model. Quality: Spearman x100 of mean-pooled cosine
similarity on the full STS-B dev split (1,500 pairs), and on 1,500 pairs of STS-B train as a
second split for the int8 rows (DESIGN.md §9 asks to check int8 on two splits).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from slimformer.methods import Plan, model_size
from slimformer.searcher.config import load_study_config
from slimformer.searcher.devices.latency import device_facts, measure_latency
from slimformer.searcher.problem.data import load_rows
from slimformer.searcher.problem.workbench import Workbench

from benchmarks.common import RESULTS

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "stsb"
NAMES = ["genre", "file", "year", "id", "score", "sentence1", "sentence2"]

ROWS = [
    ("baseline", {}, False),
    ("bits=8 everywhere", {"bits": 8}, False),
    ("bits=16 everywhere", {"bits": 16}, False),
    ("heads 6/12 per layer", {"heads": 6}, True),
    ("FFN 768/1536 per layer", {"ffn": 768}, True),
    ("4 of 6 layers (top 2 dropped)", {"layers": [0, 1, 2, 3]}, False),
    ("heads 6/12 + FFN 768 + bits 8", {"heads": 6, "ffn": 768, "bits": 8}, True),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--out", default=str(RESULTS / "compression_results"))
    ap.add_argument("--reuse-quality", action="store_true",
                    help="take the Spearman figures from the existing results JSON; re-measure latency only")
    args = ap.parse_args()
    previous = json.loads(Path(args.out + ".json").read_text())["rows"] if args.reuse_quality else {}
    cfg = load_study_config(data={
        "model": "minilm-l6", "task": "sentence-similarity",
        "data": {"format": "tsv", "header": False, "names": NAMES, "validation": str(SHARED / "sts-dev.csv"),
                 "calibration": str(ROOT / "studies" / "data" / "sts-train-1k.tsv"), "calibration_size": 1024},
        "device": {"threads": 2, "batch_size": 1, "seq_len": 128},
    })
    bench = Workbench(cfg, log=print)
    second = bench.task.prepare(load_rows(SHARED / "sts-train.csv", bench.task.name, fmt="tsv", header=False,
                                          names=NAMES, limit=1500))
    models, meta = {}, {}
    for label, fields, both in ROWS:
        for importance in (("magnitude", "fisher") if both else ("magnitude",)):
            plan = Plan.from_dict({**fields, "importance": importance})
            t0 = time.perf_counter()
            model = bench.model if label == "baseline" else bench.build(plan)
            key = f"{label} [{importance}]" if both else label
            models[key] = model
            meta[key] = {"label": label, "importance": importance if both else "-", "plan": plan.to_dict(),
                         "build_s": time.perf_counter() - t0}
            print(f"built {key} in {meta[key]['build_s']:.1f} s")
    for key, model in models.items():
        meta[key].update(model_size(model))
        if key in previous:
            meta[key].update({k: v for k, v in previous[key].items() if k.startswith("spearman")})
            continue
        meta[key]["spearman_dev"] = bench.task.quality(model, bench.validation)["quality"]
        if key == "baseline" or "bits=8" in key or "bits 8" in key:  # int8 checked on a second split
            meta[key]["spearman_train1500"] = bench.task.quality(model, second)["quality"]
        print(f"{key}: {meta[key]}", flush=True)
    runners = {k: bench.runner(m) for k, m in models.items()}
    lat = measure_latency(runners, baseline="baseline", rounds=args.rounds, warmup=5, threads=2)
    for key, res in lat.items():
        meta[key]["latency"] = res.to_dict()
    facts = {**device_facts(2), "batch_size": 1, "seq_len": 128, "rounds": args.rounds}
    Path(args.out + ".json").write_text(json.dumps({"device": facts, "rows": meta}, indent=1, default=str))
    Path(args.out + ".md").write_text(render(meta, facts))
    print(render(meta, facts))


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def render(meta: dict, facts: dict) -> str:
    lines = [
        "# Compression core: all-MiniLM-L6-v2 on STS-B",
        "",
        "Command: `python -m benchmarks.compression_table` (writes this file and compression_results.json).",
        f"Device: {facts['cpu']} (flags: {', '.join(facts['flags']) or 'none of AMX/VNNI/AVX512'}), "
        f"{facts['threads']} threads of {facts['cores']} cores, torch {facts['torch']}, eager; batch 1, "
        f"128 tokens; {facts['rounds']} interleaved rounds.",
        "Spearman x100, mean-pooled cosine; dev = STS-B dev (1,500 pairs), train-1500 = 1,500 STS-B train pairs.",
        "Pruned rows: magnitude and fisher importance side by side (fisher: 1,024 STS-B train pairs, "
        "MSE of cosine vs score/5). No recovery (no distillation, no mask tuning).",
        "",
        "| plan | importance | params | size MB | latency ms (median) | p10-p90 ms | speedup | Spearman dev | Spearman train-1500 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in meta.values():
        lat = m["latency"]
        lines.append(
            f"| {m['label']} | {m['importance']} | {m['params'] / 1e6:.2f} M | {m['size_mb']:.1f} | "
            f"{lat['median_ms']:.2f} | {lat['p10_ms']:.2f}-{lat['p90_ms']:.2f} | {lat['speedup']:.2f}x | "
            f"{m['spearman_dev']:.2f} | {_fmt(m.get('spearman_train1500'))} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
