"""Every number format each runtime runs on this CPU, for all-MiniLM-L6-v2 and one pruned plan (issue 24):
speedup against stock PyTorch float32 (the study's baseline), quality on the quickstart's test split, and
what static int8 costs to calibrate.

The formats are the ones the runtimes declare for this CPU at run time (`Runtime.native_formats`: float32,
bfloat16, int8 = weights (activations per call, or float in OpenVINO), int8_static = weights and
activations calibrated on the quickstart's calibration split); a format a runtime does not run here is
listed with the reason. Every runner is built as the search builds a candidate (`Workbench.build`,
`Workbench.runner`: the artifact the search times and export hands over) and all are timed in the same
interleaved rounds in one process.

Rerun: python -m benchmarks.precision [--rounds N] [--pairs N]
(writes benchmarks/results/precision_results.md and .json; about 10 min on 2 cores)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings
from pathlib import Path

warnings.simplefilter("ignore")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from slimformer.methods import Plan  # noqa: E402

from benchmarks.common import RESULTS, write_md  # noqa: E402

HERE = Path(__file__).resolve().parent
# the uncompressed model, and a pruned plan of the quickstart's space (heads 8 of 12, FFN 768 of 1536 in
# every layer, Fisher importance on the calibration split), fixed before this run
PLANS = {"all-MiniLM-L6-v2": Plan(), "heads 8 + FFN 768": Plan(heads=8, ffn=768, importance="fisher")}
VARIANTS = {"float32": {"bits": 32}, "bfloat16": {"bits": 16}, "int8": {"bits": 8},
            "int8_static": {"bits": 8, "int8_scheme": "static"}}


def main() -> None:
    from slimformer.searcher.config import load_study_config
    from slimformer.searcher.devices.latency import measure_latency
    from slimformer.searcher.devices.registry import get_runtime
    from slimformer.searcher.problem.workbench import Workbench

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds (default 30)")
    ap.add_argument("--pairs", type=int, default=0, help="score the first N test pairs only (default: all)")
    args = ap.parse_args()
    started = time.time()

    def log(msg):
        print(f"[{time.time() - started:5.0f} s] {msg}", file=sys.stderr, flush=True)

    cfg = load_study_config(HERE.parent / "studies/quickstart.yaml")
    bench = Workbench(cfg, log=log)
    bench.choose_attention()
    threads = cfg.device.threads
    runners, scored, rows, refused = {}, {}, {}, []
    for plan_name, base in PLANS.items():
        for fmt, fields in VARIANTS.items():
            plan = dataclasses.replace(base, **fields)
            model = bench.build(plan)
            for rt in bench.runtimes:
                reason = get_runtime(rt).plan_refusal([fields["bits"]], plan.int8_scheme)
                if reason:
                    refused.append((plan_name, fmt, rt, reason))
                    continue
                log(f"building {plan_name}, {fmt}, {rt} ...")
                t0 = time.perf_counter()
                runner = bench.runner(model, rt)
                key = f"{plan_name} | {fmt} | {rt}"
                runners[key], scored[key] = runner, bench.as_run(model, runner)
                rows[key] = {"plan": plan_name, "format": fmt, "runtime": rt, "build_s": time.perf_counter() - t0}
    runners["baseline"] = bench.baseline_runner
    log(f"timing {len(runners)} runners, {args.rounds} interleaved rounds ...")
    lat = measure_latency(runners, baseline="baseline", rounds=args.rounds, warmup=3, threads=threads)
    for key, row in rows.items():
        ratios = sorted(b / c for b, c in zip(lat["baseline"].samples_ms, lat[key].samples_ms))
        row.update(median_ms=lat[key].median_ms, speedup=ratios[len(ratios) // 2],
                   speedup_p10=ratios[len(ratios) // 10], speedup_p90=ratios[(9 * len(ratios)) // 10])
    test = bench.test[:args.pairs // cfg.data.batch_size] if args.pairs else bench.test
    with torch.inference_mode():
        original = bench.task.quality(bench.model, test)["quality"]
        for key, row in rows.items():
            log(f"quality of {key} on test ...")
            row["quality"] = bench.task.quality(scored[key], test)["quality"]
            row["change"] = row["quality"] - original
    for plan_name in PLANS:  # what calibration costs: the static build over the dynamic int8 build
        for rt in bench.runtimes:
            static, dynamic = rows.get(f"{plan_name} | int8_static | {rt}"), rows.get(f"{plan_name} | int8 | {rt}")
            if static and dynamic:
                static["calibration_s"] = static["build_s"] - dynamic["build_s"]
    facts = bench.facts()
    out = {"rows": list(rows.values()), "refused": refused, "original_quality": original, "device": facts,
           "rounds": args.rounds, "calibration_inputs": len(bench.calibration_inputs),
           "seconds": time.time() - started}
    (RESULTS / "precision_results.json").write_text(json.dumps(out, indent=1, default=str))
    lines = ["# Number formats per runtime on this CPU (all-MiniLM-L6-v2, STS-B)", "",
             f"Command: `python -m benchmarks.precision --rounds {args.rounds}{f' --pairs {args.pairs}' if args.pairs else ''}`"
             f" ({out['seconds'] / 60:.1f} min). Batch 1, 128 tokens, {threads} threads, {args.rounds} interleaved rounds "
             "in one process; speedup: median (p10-p90) of per-round ratios against stock PyTorch float32 (the study's "
             f"baseline). Quality: Spearman x100 on the quickstart's data.test (STS-B dev), uncompressed {original:.2f}. "
             f"Static int8 calibrates on {out['calibration_inputs']} sentences of the calibration split; its calibration "
             "time is its build time over the dynamic int8 build's.", "",
             "Formats this CPU runs on real kernels: " + "; ".join(f"{rt}: {', '.join(fs)}"
                                                                   for rt, fs in facts["formats"].items()), "",
             "| plan | format | runtime | quality | change | speedup (p10-p90) | build s | calibration s |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows.values():
        cal = f"{r['calibration_s']:.1f}" if "calibration_s" in r else ""
        lines.append(f"| {r['plan']} | {r['format']} | {r['runtime']} | {r['quality']:.2f} | {r['change']:+.2f} | "
                     f"{r['speedup']:.2f}x ({r['speedup_p10']:.2f}-{r['speedup_p90']:.2f}) | {r['build_s']:.1f} | {cal} |")
    lines += ["", "Not run here (the runtime's own reason):", ""]
    lines += sorted({f"- {fmt} in {rt}: {reason}" for _, fmt, rt, reason in refused})
    note = (f"torch {facts.get('torch')}, load average (1/5/15 min) at the end "
            f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())}.")
    write_md(str(RESULTS / "precision_results"), lines, note)


if __name__ == "__main__":
    main()
