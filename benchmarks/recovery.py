"""Quality recovery on all-MiniLM-L6-v2: plans at about 2x and 3x measured speedup, each with no
recovery, least-squares mask tuning (Kwon et al. 2022), and 100 / 300 distillation steps from
the uncompressed model; quality on the full dev split and the time each recovery adds.

    python -m benchmarks.recovery                   # STS-B and SST-2 -> benchmarks/results/recovery_results.{md,json}
    python -m benchmarks.recovery --tasks stsb      # STS-B only (no SST-2 teacher needed)
    python -m benchmarks.recovery --recoveries "distill 100 steps + attention"   # add rows to the stored run

STS-B: all-MiniLM-L6-v2 itself, Spearman x100 of mean-pooled cosine similarity on the 1,500 dev
pairs, calibration/distillation on 1,024 STS-B train pairs (studies/data/sts-train-1k.tsv),
embedding loss. SST-2: the fine-tuned teacher (recipe minilm-sst2, trained once and cached),
accuracy on the 872 dev sentences, calibration/distillation on 2,048 train sentences, logits KD
(temperature 2, alpha 0.5 with the task loss). Speedup: batch 1, 128 tokens, 2 threads, each
plan timed against the uncompressed model in interleaved rounds (median of per-round ratios);
recovery does not change a model's structure, so each plan is timed once.
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
SHARED = ROOT.parent / "shared" / "data"
NAMES = ["genre", "file", "year", "id", "score", "sentence1", "sentence2"]

PLANS = {  # label -> plan fields (fisher importance, int8 weights)
    "~2x: heads 6/12, FFN 768/1536, int8": {"heads": 6, "ffn": 768, "bits": 8},
    "~3x: heads 4/12, FFN 384/1536, int8": {"heads": 4, "ffn": 384, "bits": 8},
}
RECOVERIES = {
    "none": {},
    "mask tuning": {"recovery": "mask_tuning"},
    "distill 100 steps": {"distill": {"steps": 100}},
    "distill 300 steps": {"distill": {"steps": 300}},
}
# run on request (--recoveries) and added to the stored rows
EXTRA_RECOVERIES = {
    "distill 100 steps + attention": {"distill": {"steps": 100, "extra_losses": ["attention"]}},
    "mask tuning + distill 100 steps": {"recovery": "mask_tuning", "distill": {"steps": 100}},
}


def _stsb_bench() -> Workbench:
    cfg = load_study_config(data={
        "model": "minilm-l6", "task": "sentence-similarity",
        "data": {"format": "tsv", "header": False, "names": NAMES, "validation": str(SHARED / "stsb" / "sts-dev.csv"),
                 "calibration": str(ROOT / "studies" / "data" / "sts-train-1k.tsv"), "calibration_size": 1024},
        "device": {"threads": 2, "batch_size": 1, "seq_len": 128},
    })
    return Workbench(cfg, log=print)


def _sst2_bench(model: str) -> Workbench:
    cfg = load_study_config(data={
        "model": model, "task": "text-classification",
        "data": {"validation": str(SHARED / "sst2" / "dev.tsv"), "calibration": str(SHARED / "sst2" / "train.tsv"),
                 "calibration_size": 2048},
        "device": {"threads": 2, "batch_size": 1, "seq_len": 128},
    })
    bench = Workbench(cfg, log=print)
    task = bench.task
    # the two SST-2 files name the text column differently (content / sentence)
    bench.validation = task.prepare(load_rows(SHARED / "sst2" / "dev.tsv", task.name, columns={"text": "content"}))
    train = load_rows(SHARED / "sst2" / "train.tsv", task.name, columns={"text": "sentence"})
    train = train.shuffle(seed=0).select(range(2048))
    bench.calibration = task.calibration(task.prepare(train))
    return bench


def run_task(name: str, bench: Workbench, distill_losses: list[str], rounds: int,
             recoveries: list[str] | None = None, stored: dict | None = None) -> dict:
    """All RECOVERIES of every plan (and the plans' speedups), or with `recoveries` only those,
    added to the `stored` result of an earlier run (whose speedups are kept)."""
    if recoveries and not stored:
        raise SystemExit(f"--recoveries adds rows to an earlier run's results, and there are none for {name}")
    base_q = bench.quality(bench.model)["quality"]
    out = {"baseline": {"quality": base_q, **model_size(bench.model)}, "plans": {}}
    print(f"[{name}] baseline {base_q:.2f}", flush=True)
    plain = {}
    todo = {r: {**RECOVERIES, **EXTRA_RECOVERIES}[r] for r in recoveries} if recoveries else RECOVERIES
    for label, fields in PLANS.items():
        rows = dict(stored["plans"][label]["recoveries"]) if recoveries else {}
        for rec, extra in todo.items():
            spec = {**fields, "importance": "fisher", **extra}
            if "distill" in extra:
                d = dict(extra["distill"])
                more = d.pop("extra_losses", [])
                spec["distill"] = {**d, "losses": distill_losses + more}
            plan = Plan.from_dict(spec)
            bench.build(Plan.from_dict({**fields, "importance": "fisher"}))  # warm the Fisher cache: not counted
            t0 = time.perf_counter()
            model = bench.build(plan)
            build_s = time.perf_counter() - t0
            q = bench.quality(model)["quality"]
            rows[rec] = {"quality": q, "delta": q - base_q, "build_s": build_s, "plan": plan.to_dict()}
            print(f"[{name}] {label} / {rec}: {q:.2f} ({q - base_q:+.2f}), build {build_s:.1f} s", flush=True)
            if rec == "none":
                plain[label] = model
                rows[rec].update(model_size(model))
        out["plans"][label] = {"recoveries": rows}
    if recoveries:  # structures unchanged: keep the measured speedups
        for label in PLANS:
            out["plans"][label].update({k: v for k, v in stored["plans"][label].items() if k != "recoveries"})
        out["baseline"]["latency_ms"] = stored["baseline"]["latency_ms"]
        return out
    lat = measure_latency({"baseline": bench.runner(bench.model), **{k: bench.runner(m) for k, m in plain.items()}},
                          baseline="baseline", rounds=rounds, warmup=5, threads=2)
    for label in PLANS:
        r = lat[label]
        out["plans"][label].update({"speedup": r.speedup, "latency_ms": r.median_ms,
                                    "p10_ms": r.p10_ms, "p90_ms": r.p90_ms})
    out["baseline"]["latency_ms"] = lat["baseline"].median_ms
    return out


NOTES_MARK = "<!-- notes below are written by hand and kept when the script rewrites the tables -->"


def render(results: dict, facts: dict) -> str:
    lines = ["# Quality recovery on all-MiniLM-L6-v2", "",
             "Command: `python -m benchmarks.recovery` (see the script's docstring for the protocol).",
             f"Device: {facts.get('cpu')}, {facts.get('threads')} threads, torch {facts.get('torch')}. "
             "Build time = pruning + recovery + int8 conversion for one candidate (the Fisher scores are "
             "cached per study and not counted); it is what each recovery adds to a trial.", ""]
    for task, res in results.items():
        b = res["baseline"]
        metric = "Spearman x100 (dev, 1,500 pairs)" if task == "stsb" else "accuracy % (dev, 872 sentences)"
        lines += [f"## {task.upper()}: {metric}; uncompressed {b['quality']:.2f}, {b['latency_ms']:.1f} ms", "",
                  "| plan | measured speedup | recovery | quality | vs uncompressed | build time per trial (s) |",
                  "| --- | ---: | --- | ---: | ---: | ---: |"]
        for label, p in res["plans"].items():
            for rec, r in p["recoveries"].items():
                lines.append(f"| {label} | {p['speedup']:.2f}x | {rec} | {r['quality']:.2f} | {r['delta']:+.2f} | "
                             f"{r['build_s']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="stsb,sst2")
    ap.add_argument("--sst2-model", default="recipe:minilm-sst2")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--out", default=str(RESULTS / "recovery_results"))
    ap.add_argument("--recoveries", default="", help="comma-separated recovery labels to run and add to the stored "
                    f"rows (speedups kept); extra ones: {', '.join(EXTRA_RECOVERIES)}")
    args = ap.parse_args()
    torch.manual_seed(0)
    results = {}
    out = Path(args.out + ".json")
    if out.exists():  # keep the other task's rows when re-running one task
        results = json.loads(out.read_text()).get("results", {})
    only = [r for r in args.recoveries.split(",") if r]
    unknown = [r for r in only if r not in {**RECOVERIES, **EXTRA_RECOVERIES}]
    if unknown:
        raise SystemExit(f"unknown recoveries {unknown}; known: {', '.join({**RECOVERIES, **EXTRA_RECOVERIES})}")
    for task in args.tasks.split(","):
        if task == "stsb":
            results["stsb"] = run_task("stsb", _stsb_bench(), ["embedding"], args.rounds, only, results.get("stsb"))
        elif task == "sst2":
            results["sst2"] = run_task("sst2", _sst2_bench(args.sst2_model), ["logits"], args.rounds, only,
                                       results.get("sst2"))
        else:
            raise SystemExit(f"unknown task {task!r}; use stsb and/or sst2")
        facts = device_facts(2, "eager")  # written after each task: a stopped run keeps what it finished
        out.write_text(json.dumps({"device": facts, "results": results}, indent=2))
        md = Path(args.out + ".md")
        old = md.read_text() if md.exists() else ""
        notes = old[old.index(NOTES_MARK):] if NOTES_MARK in old else ""
        md.write_text(render(results, facts) + "\n" + ("\n" + notes if notes else ""))
    print(render(results, facts))


if __name__ == "__main__":
    main()
