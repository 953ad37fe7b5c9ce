"""Do denormal floats slow a finished model down, and does flushing them to zero win it back?

A plan distilled by `slimformer finish` timed slower in OpenVINO than the same plan with its
pretrained weights (sharper attention after training underflows into denormal floats, which x86
handles in microcode). This times, in one process and the same interleaved rounds against stock
float32 PyTorch: the finished model and the same plan with pretrained weights, each in ONNX Runtime
and in OpenVINO, with and without flushing denormals to zero (ONNX Runtime:
`session.set_denormal_as_zero`; OpenVINO: `CPU_DENORMALS_OPTIMIZATION`), and reports the largest
output difference flushing causes.

    python -m benchmarks.denormals --final runs/repeatability/seed0-finish/studies/quickstart-final/trial-3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

warnings.simplefilter("ignore")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.common import RESULTS, write_md  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = RESULTS / "denormals_results"


def main() -> None:
    import numpy as np
    import openvino as ov
    from slimformer.methods import load_compressed, plan_of
    from slimformer.searcher.config import load_study_config
    from slimformer.searcher.devices import onnxruntime as ortrt
    from slimformer.searcher.devices import openvino as ovrt
    from slimformer.searcher.devices.latency import device_facts
    from slimformer.searcher.problem.workbench import Workbench

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--final", required=True, help="a final model folder written by slimformer finish")
    ap.add_argument("--study", default=str(HERE.parent / "studies" / "quickstart.yaml"))
    ap.add_argument("--rounds", type=int, default=60)
    args = ap.parse_args()
    started, load_start = time.time(), " / ".join(f"{x:.1f}" for x in os.getloadavg())
    cfg = load_study_config(args.study)
    bench = Workbench(cfg, log=lambda msg: None)
    threads = cfg.device.threads
    final, _, plan = load_compressed(args.final)
    pretrained = bench.build(plan, structure_only=True)  # the same shapes and kernels, pretrained weights
    feed = {k: v.numpy() for k, v in bench.inputs.items()}
    runners, outputs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, model in (("finished", final), ("pretrained weights", pretrained)):
            folder = Path(tmp) / label.replace(" ", "-")
            (folder / "onnx").mkdir(parents=True)
            (folder / "ov").mkdir()
            ortrt.build(model, bench.inputs, folder / "onnx", {})
            ovrt.build(model, bench.inputs, folder / "ov", {})
            onnx_bytes = (folder / "onnx" / "model.onnx").read_bytes()
            ir = ov.Core().read_model(str(folder / "ov" / "model.xml"))
            for flush in (False, True):
                sess = ortrt.ort_session(onnx_bytes, threads, {"session.set_denormal_as_zero": "1" if flush else "0"})
                f = {i.name: feed[i.name] for i in sess.get_inputs()}
                name = f"{label}, ONNX Runtime, flush {'on' if flush else 'off'}"
                runners[name] = (lambda s=sess, f=f: s.run(None, f))
                outputs[name] = runners[name]()[0]
                compiled = ovrt.compile_ir(ir, threads, {"CPU_DENORMALS_OPTIMIZATION": flush})
                req = ovrt.infer(compiled)  # flushes only while it runs, and only when compiled to
                g = {i.get_any_name(): feed[i.get_any_name()] for i in compiled.inputs}
                name = f"{label}, OpenVINO, flush {'on' if flush else 'off'}"
                runners[name] = (lambda r=req, g=g: r(g))
                outputs[name] = np.array(req(g)[compiled.outputs[0]])
        samples = bench.paired_runners(runners)(args.rounds)
    rows = []
    for name in runners:
        ratios = sorted(b / c for b, c in zip(samples["baseline"], samples[name]))
        off = name.replace("flush on", "flush off")
        rows.append({"runner": name, "speedup": statistics.median(ratios), "p10": ratios[len(ratios) // 10],
                     "p90": ratios[9 * len(ratios) // 10], "median_ms": statistics.median(samples[name]),
                     "max_abs_diff_vs_flush_off": float(np.abs(outputs[name] - outputs[off]).max())})
    facts = {**device_facts(threads), **bench.baseline_facts()}
    (OUT.with_suffix(".json")).write_text(json.dumps(
        {"rows": rows, "final": args.final, "plan": plan_of(final).to_dict(), "rounds": args.rounds,
         "device": facts, "seconds": time.time() - started}, indent=1, default=str))
    lines = ["# Denormal floats in a finished model (ONNX Runtime, OpenVINO)", "",
             f"Command: `python -m benchmarks.denormals --final {args.final}`. Batch {cfg.device.batch_size}, "
             f"{cfg.device.seq_len} tokens, {threads} threads, {args.rounds} interleaved rounds of every runner "
             "in one process; speedup = median (p10-p90) of per-round ratios against stock float32 PyTorch "
             f"({facts.get('attention')} attention). The same plan with its pretrained weights is the control.", "",
             "| runner | speedup (p10-p90) | median ms | max abs output change from flushing |",
             "|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['runner']} | {r['speedup']:.2f}x ({r['p10']:.2f}-{r['p90']:.2f}) | "
                     f"{r['median_ms']:.1f} | {r['max_abs_diff_vs_flush_off']:.1e} |")
    note = (f"{facts.get('cpu')}, {facts.get('cores')} cores; load average {load_start} at the start; "
            f"{(time.time() - started) / 60:.1f} min.")
    write_md(str(OUT), lines, note)


if __name__ == "__main__":
    main()
