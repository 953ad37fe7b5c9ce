"""Mixed precision on all-MiniLM-L6-v2 / STS-B dev: per-layer bits chosen by sensitivity
against uniform 8-bit and 4-bit at equal model size; round-to-nearest vs GPTQ; SmoothQuant
scaling on and off. Quality and size only for <8-bit weights (simulated: no kernel here).

    python -m benchmarks.mixed_precision      # writes benchmarks/results/mixed_precision_results.{md,json}

Quality: Spearman x100 of mean-pooled cosine similarity on all 1,500 STS-B dev pairs.
Calibration (GPTQ, smoothing, sensitivity): the first 256 pairs of STS-B train (8 batches of 32).
Size: `model_size` (int8: 1 byte + a float32 scale per output row; b-bit: b/8 bytes + a float16
scale per group of 64 inputs; embeddings stay float32 in every row).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr
from slimformer.methods import Plan, model_size
from slimformer.methods.sensitivity import inverse_order, layer_sensitivity, sensitivity_plans, uniform_sizes
from slimformer.searcher.config import load_study_config
from slimformer.searcher.devices.latency import device_facts
from slimformer.searcher.problem.workbench import Workbench

from benchmarks.common import RESULTS

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "stsb"
NAMES = ["genre", "file", "year", "id", "score", "sentence1", "sentence2"]
COMMAND = "python -m benchmarks.mixed_precision"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calibration-size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=30, help="latency rounds for the real-kernel (int8) rows (0: skip)")
    ap.add_argument("--hessian-batches", type=int, default=1, help="batches for the Hutchinson check (0: skip)")
    ap.add_argument("--reuse-sensitivity", metavar="JSON",
                    help="take the Fisher/Hutchinson scores from an earlier results JSON instead of recomputing")
    ap.add_argument("--keep-rows", action="store_true",
                    help="keep the rows already in the results JSON (same calibration) and compute only the missing "
                         "ones, so a run stopped part-way can be completed later")
    ap.add_argument("--out", default=str(RESULTS / "mixed_precision_results"))
    args = ap.parse_args()
    cfg = load_study_config(data={
        "model": "minilm-l6", "task": "sentence-similarity",
        "data": {"format": "tsv", "header": False, "names": NAMES, "validation": str(SHARED / "sts-dev.csv"),
                 "calibration": str(SHARED / "sts-train.csv"), "calibration_size": args.calibration_size},
        "device": {"threads": 2, "batch_size": 1, "seq_len": 128},
    })
    bench = Workbench(cfg, log=print)
    model, calib = bench.model, bench.calibration
    t0 = time.perf_counter()
    previous = json.loads(Path(args.reuse_sensitivity).read_text())["sensitivity"] if args.reuse_sensitivity else {}
    fisher = previous.get("fisher") or layer_sensitivity(model, calib, "fisher")
    print(f"fisher sensitivity {[f'{s:.3e}' for s in fisher]} in {time.perf_counter() - t0:.0f} s", flush=True)
    hessian = previous.get("hutchinson")
    if args.hessian_batches and not hessian:
        from slimformer.methods import Calibration

        sub = Calibration(calib.batches[:args.hessian_batches], loss_fn=calib.loss_fn, model_inputs=calib.model_inputs)
        t0 = time.perf_counter()
        hessian = layer_sensitivity(model, sub, "hessian", samples=2)
        print(f"hutchinson sensitivity {[f'{s:.3e}' for s in hessian]} in {time.perf_counter() - t0:.0f} s")

    u8, u4, u3 = uniform_sizes(model, Plan(), (8, 4, 3))
    low = sensitivity_plans(model, calib, Plan(), (8, 4, 3, 2), [u4], sensitivity=fisher)[0]
    mid = sensitivity_plans(model, calib, Plan(), (8, 4, 3, 2), [u3], sensitivity=fisher)[0]
    inv_mid = Plan(bits=tuple(inverse_order(list(mid.bits), fisher)))
    # between two uniform sizes the allocation cannot be uniform: which layers get the extra bit
    # (the most sensitive, or in the inverse control the least) tests the sensitivity signal itself
    half = sensitivity_plans(model, calib, Plan(), (4, 3), [(u3 + u4) / 2], sensitivity=fisher)[0]
    inv_half = Plan(bits=tuple(inverse_order(list(half.bits), fisher)))
    high = sensitivity_plans(model, calib, Plan(), (32, 8, 4), [u8], sensitivity=fisher)[0]
    inv_low = Plan(bits=tuple(inverse_order(list(low.bits), fisher)))
    inv_high = Plan(bits=tuple(inverse_order(list(high.bits), fisher)))
    rows = [  # most telling first: results are written after every row
        ("float32 (uncompressed)", Plan(), "all"),
        ("uniform 4-bit, RTN", Plan(bits=4), "u4"),
        ("uniform 4-bit, GPTQ", Plan(bits=4, quant_method="gptq"), "u4"),
        (f"sensitivity mix {list(low.bits)} from {{8,4,3,2}}, RTN", low, "u4"),
        ("uniform 8-bit, RTN", Plan(bits=8), "u8"),
        (f"sensitivity mix {list(high.bits)} from {{32,8,4}}, RTN", high, "u8"),
        (f"inverse control {list(inv_high.bits)}, RTN", inv_high, "u8"),
        ("uniform 3-bit, RTN", Plan(bits=3), "u3"),
        (f"sensitivity mix {list(mid.bits)} from {{8,4,3,2}}, RTN", mid, "u3"),
        (f"inverse control {list(inv_mid.bits)}, RTN", inv_mid, "u3"),
        (f"sensitivity mix {list(half.bits)} from {{4,3}}, RTN", half, "(u3+u4)/2"),
        (f"inverse control {list(inv_half.bits)}, RTN", inv_half, "(u3+u4)/2"),
        (f"inverse control {list(inv_low.bits)}, RTN", inv_low, "u4"),
        ("uniform 8-bit, RTN + smooth 0.5", Plan(bits=8, smooth=0.5), "u8"),
        ("uniform 4-bit, RTN + smooth 0.5", Plan(bits=4, smooth=0.5), "u4"),
        ("uniform 8-bit, GPTQ", Plan(bits=8, quant_method="gptq"), "u8"),
        (f"sensitivity mix {list(low.bits)}, GPTQ", Plan(bits=low.bits, quant_method="gptq"), "u4"),
        (f"inverse control {list(inv_low.bits)}, GPTQ", Plan(bits=inv_low.bits, quant_method="gptq"), "u4"),
        ("uniform 8-bit, GPTQ + smooth 0.5", Plan(bits=8, quant_method="gptq", smooth=0.5), "u8"),
    ]
    facts = {**device_facts(2), "batch_size": 1, "seq_len": 128, "rounds": args.rounds}
    out = {"device": facts, "sizes_mb": {"uniform8": u8, "uniform4": u4, "uniform3": u3}, "baseline_latency": None,
           "sensitivity": {"fisher": fisher, "hutchinson": hessian}, "rows": [],
           "calibration_pairs": args.calibration_size, "hessian_batches": args.hessian_batches, "command": COMMAND}
    results, timed = out["rows"], {}
    kept = {}
    if args.keep_rows and Path(args.out + ".json").exists():
        old = json.loads(Path(args.out + ".json").read_text())
        if old.get("calibration_pairs") == args.calibration_size:
            kept = {r["label"]: r for r in old["rows"]}
            out["notes"] = old.get("notes", [])
    latency_rows = ("uniform 8-bit, RTN", "uniform 8-bit, RTN + smooth 0.5", "uniform 8-bit, GPTQ")
    for label, plan, budget in rows:
        if label in kept and not (args.rounds and label in latency_rows):
            results.append({k: v for k, v in kept[label].items() if k != "latency"})
            print(f"{label}: kept from the earlier run", flush=True)
            continue
        t0 = time.perf_counter()
        built = bench.build(plan) if label != rows[0][0] else model
        build_s = time.perf_counter() - t0
        sz = model_size(built, plan.group_size)
        rho = spearman(bench, built)
        results.append({"label": label, "budget": budget, "plan": plan.to_dict(), "size_mb": sz["size_mb"],
                        "simulated": sz["simulated"], "spearman": rho, "build_s": build_s})
        if label in latency_rows:
            timed[label] = built
        print(f"{label}: {sz['size_mb']:.2f} MB, Spearman {rho:.2f} (built in {build_s:.0f} s)", flush=True)
        write(out, args.out)
    if args.rounds:
        lat = bench.latency(timed, rounds=args.rounds)
        for r in results:
            if r["label"] in lat:
                r["latency"] = lat[r["label"]].to_dict()
        out["baseline_latency"] = lat["baseline"].to_dict()
        write(out, args.out)
    print(render(out))


def write(out: dict, stem: str) -> None:
    Path(stem + ".json").write_text(json.dumps(out, indent=1, default=str))
    Path(stem + ".md").write_text(render(out))


def spearman(bench, model) -> float:
    sims, gold = [], []
    with torch.inference_mode():
        for b in bench.full_validation:
            a, c = bench.task.embed(model, b["a"]), bench.task.embed(model, b["b"])
            sims.append(torch.nn.functional.cosine_similarity(a, c))
            gold.append(b["score"])
    return float(spearmanr(torch.cat(sims).numpy(), torch.cat(gold).numpy()).statistic * 100)


def render(out: dict) -> str:
    f = out["device"]
    sens = out["sensitivity"]
    lines = [
        "# Mixed precision: all-MiniLM-L6-v2 on STS-B dev",
        "",
        f"Command: `{out['command']}` (writes this file and mixed_precision_results.json; 19 rows; about 10 min on a quiet 2-core machine, `--keep-rows` completes a stopped run).",
        f"Device: {f['cpu']}, {f['threads']} threads, torch {f['torch']}.",
        "Quality: Spearman x100 of mean-pooled cosine similarity on all 1,500 STS-B dev pairs. Calibration "
        f"(GPTQ, smoothing, sensitivity): the first {out['calibration_pairs']} STS-B train pairs. "
        "Group size 64 for 4/3/2-bit weights; int8 is per output channel (torch.ao dynamic int8 Linear).",
        "",
        "**Latency below 8 bits is NOT measured: 4/3/2-bit weights are simulated** (rounded to the low-bit "
        "grid, stored and computed in float32; size and quality are real, speed is not). "
        + (f"Only the int8 rows with a latency below were timed, on the real int8 kernel (batch 1, 128 tokens, "
           f"{f['rounds']} interleaved rounds)." if out.get("baseline_latency") else
           "No latency was measured in this run (see the notes at the end)."),
        "",
        "Per-layer sensitivity (Fisher trace per weight, layers 0..5): "
        + ", ".join(f"{s:.2e}" for s in sens["fisher"]) + ".",
    ]
    if sens.get("hutchinson"):
        lines.append(f"Hutchinson Hessian trace per weight ({out['hessian_batches']} batch(es) of 32 pairs, 2 samples; "
                     "a noisy cross-check, not used for the plans): "
                     + ", ".join(f"{s:.2e}" for s in sens["hutchinson"]) + ".")
    lines += [
        f"Budgets: u8 = size of uniform 8-bit ({out['sizes_mb']['uniform8']:.2f} MB), u4 = size of uniform "
        f"4-bit ({out['sizes_mb']['uniform4']:.2f} MB), u3 = size of uniform 3-bit "
        f"({out['sizes_mb'].get('uniform3', float('nan')):.2f} MB); every mixed row is at or under its budget. Inverse "
        "control: the same bit-widths handed out in the opposite sensitivity order (same size).",
        "",
        "| plan | budget | size MB | Spearman dev | weights | latency ms (median, p10-p90) |",
        "| --- | --- | ---: | ---: | --- | --- |",
    ]
    for r in out["rows"]:
        lat = r.get("latency")
        lat_s = f"{lat['median_ms']:.2f} ({lat['p10_ms']:.2f}-{lat['p90_ms']:.2f})" if lat else (
            "not measured (simulated)" if r["simulated"] else "-")
        lines.append(f"| {r['label']} | {r['budget']} | {r['size_mb']:.2f} | {r['spearman']:.2f} | "
                     f"{'SIMULATED <8-bit' if r['simulated'] else 'real kernels'} | {lat_s} |")
    b = out["baseline_latency"]
    if b:
        lines += ["", f"Uncompressed float32 latency in the same rounds: {b['median_ms']:.2f} ms "
                  f"({b['p10_ms']:.2f}-{b['p90_ms']:.2f})."]
    if out.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {n}" for n in out["notes"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
