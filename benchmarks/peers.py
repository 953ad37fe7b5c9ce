"""One-knob peers vs slimformer plans, all-MiniLM-L6-v2 (batch 1, 128 tokens, 2 threads), in ONE process:
stock PyTorch float32 (SDPA and eager attention), torch.ao dynamic int8, ONNX Runtime float32 and int8
(S8 per-channel weights; U8 weights with reduce_range), OpenVINO float32 and int8 weights (NNCF weight
compression), the one-line choices a user of a recent CPU tries first (OpenVINO with its default
settings, OpenVINO + nncf.quantize calibrated on the study's calibration split, PyTorch in bfloat16: each
row says the format it really ran in), and two slimformer plans (about 2x and 3x) loaded from the
artifacts `export --format` writes. All runners are timed in the same interleaved rounds (`measure_latency`); every speedup is the
median of per-round ratios against the faster of the two stock PyTorch settings. Quality: STS-B dev
(studies/data/sts-dev.tsv, the quickstart's data.test: nothing here was selected on it), Spearman x100.

The two plans were fixed before this run from earlier results files (runtimes_results.md: FFN 768 +
int8; heads 6 + FFN 768 + int8), with Fisher importance on the quickstart's calibration split; no
distillation (the finish stage of the finished-models issue is what recovers quality).

`--artifact LABEL=DIR` (repeatable) adds an exported artifact as a user gets it, for example the
quickstart's best after `slimformer finish` and `slimformer export --best` (benchmarks/repeatability.py
--finish leaves one in runs/repeatability/seed0-finish/exported).

Rerun: python -m benchmarks.peers [--artifact LABEL=DIR ...]   (writes benchmarks/results/peers_results.md and .json;
~6 min on 2 cores)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.simplefilter("ignore")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from slimformer.methods import Plan  # noqa: E402

from benchmarks.common import RESULTS, write_md  # noqa: E402

HERE = Path(__file__).resolve().parent
THREADS, ROUNDS = 2, int(os.environ.get("ROUNDS", 30))
PAIRS = int(os.environ.get("PAIRS", 0))  # quality on the first PAIRS dev pairs (batches of the length-sorted split); 0: all
PLANS = {"slimformer FFN 768 + int8": Plan(ffn=768, bits=8, importance="fisher"),
         "slimformer heads 6 + FFN 768 + int8": Plan(heads=6, ffn=768, bits=8, importance="fisher")}


def load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def ort(path):
    from slimformer.searcher.devices import onnxruntime

    return onnxruntime.load({"model.onnx": Path(path).read_bytes()}, THREADS)


def ov(model):
    from slimformer.searcher.devices.openvino import compile_ir, session

    return session(compile_ir(model, THREADS))


NNCF_SAMPLES = 300  # nncf.quantize's default subset_size, from the calibration split's sentences
CALIBRATION_S: dict[str, float] = {}  # runner -> seconds its calibration took
# runner -> the format it really ran in (OpenVINO's read back after compiling, artifacts' from their manifest)
FORMATS: dict[str, str] = {"PyTorch float32, SDPA attention": "float32", "PyTorch float32, eager attention": "float32",
                           "torch.ao dynamic int8": "int8 weights, activations per call",
                           "ONNX Runtime float32": "float32", "OpenVINO float32": "f32",
                           "ONNX Runtime int8, S8 weights per-channel": "int8 weights, activations per call",
                           "ONNX Runtime int8, U8 weights reduce_range": "int8 weights, activations per call",
                           "OpenVINO int8 weights (NNCF weight compression)": "int8 weights, f32",
                           "PyTorch model.to(torch.bfloat16)": "bfloat16"}


def manifest_format(manifest: dict) -> str:
    """What an exported artifact runs in, from its manifest."""
    precision = (manifest.get("compile_config") or {}).get("INFERENCE_PRECISION_HINT", "float32")
    if not manifest.get("int8_layers"):
        return precision
    return f"{len(manifest['int8_layers'])} int8 Linears ({manifest.get('int8_scheme') or 'dynamic'}), the rest {precision}"


def ov_default(model):
    """(the inference precision the plugin chose, the session): OpenVINO compiled as
    `core.compile_model(model, "CPU")` does (its own precision and performance hint), with the thread count
    set and CPU pinning off."""
    import openvino
    from slimformer.searcher.devices.openvino import session

    # CPU pinning off and the thread count set, as slimformer compiles every OpenVINO model
    compiled = openvino.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": THREADS, "ENABLE_CPU_PINNING": False})
    precision = str(compiled.get_property("INFERENCE_PRECISION_HINT")).removeprefix("<Type: '").removesuffix("'>")
    return precision, session(compiled)


class BF16Model(torch.nn.Module):
    """A bfloat16 PyTorch model called like the float one (float outputs for scoring)."""

    def __init__(self, model):
        super().__init__()
        self.m, self.config = model, model.config

    def forward(self, **inputs):
        out = self.m(**inputs)
        for key in ("last_hidden_state", "pooler_output", "logits"):
            if getattr(out, key, None) is not None:
                out[key] = out[key].float()
        return out


def peers(bench, tmp: Path) -> dict:
    """name -> (callable like the model for quality, zero-argument runner for latency)."""
    import nncf
    import openvino
    from slimformer.searcher.devices.artifacts import ArtifactModel
    from slimformer.searcher.devices.graph import export_onnx
    from slimformer.searcher.devices.onnxruntime import quantize_matmuls
    from slimformer.searcher.problem.models import load_model

    inputs = bench.inputs
    sdpa = bench.model
    eager = load_model(bench.cfg.model.name, bench.task.model_class, attn_implementation="eager")
    ao = torch.ao.quantization.quantize_dynamic(copy.deepcopy(sdpa), {torch.nn.Linear}, dtype=torch.qint8)
    out = {"PyTorch float32, SDPA attention": sdpa, "PyTorch float32, eager attention": eager,
           "torch.ao dynamic int8": ao}
    f32 = export_onnx(eager, inputs, tmp / "f32.onnx")
    quantize_matmuls(f32, tmp / "s8.onnx", None, "s8")
    quantize_matmuls(f32, tmp / "u8.onnx", None, "u8")
    for name, path in (("ONNX Runtime float32", f32), ("ONNX Runtime int8, S8 weights per-channel", tmp / "s8.onnx"),
                       ("ONNX Runtime int8, U8 weights reduce_range", tmp / "u8.onnx")):
        out[name] = ArtifactModel(ort(path), sdpa.config)
    out["OpenVINO float32"] = ArtifactModel(ov(openvino.convert_model(str(f32))), sdpa.config)
    compressed = nncf.compress_weights(openvino.convert_model(str(f32)), mode=nncf.CompressWeightsMode.INT8_SYM,
                                       ignored_scope=nncf.IgnoredScope(types=["Gather"]))
    out["OpenVINO int8 weights (NNCF weight compression)"] = ArtifactModel(ov(compressed), sdpa.config)
    # the one-line choices a user of this CPU tries first (issue 24): OpenVINO as it compiles by default (its
    # own inference precision: bf16 on CPUs with AMX, and on some with AVX512-BF16), NNCF post-training
    # quantization calibrated on the study's calibration split, and PyTorch in bfloat16
    FORMATS["OpenVINO, default settings"], session = ov_default(openvino.convert_model(str(f32)))
    out["OpenVINO, default settings"] = ArtifactModel(session, sdpa.config)
    started = time.time()
    calibration = bench.calibration_examples(NNCF_SAMPLES)
    ptq = nncf.quantize(openvino.convert_model(str(f32)), nncf.Dataset(calibration),
                        model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration))
    CALIBRATION_S["OpenVINO + nncf.quantize, default settings"] = time.time() - started
    precision, session = ov_default(ptq)
    FORMATS["OpenVINO + nncf.quantize, default settings"] = f"int8 weights and activations, the rest {precision}"
    out["OpenVINO + nncf.quantize, default settings"] = ArtifactModel(session, sdpa.config)
    out["PyTorch model.to(torch.bfloat16)"] = BF16Model(copy.deepcopy(eager).to(torch.bfloat16))
    return out


def slimformer_plans(bench, tmp: Path, log) -> tuple[dict, dict]:
    from slimformer.searcher.devices.artifacts import ArtifactModel, export_model, open_artifact

    out, manifests = {}, {}
    for name, plan in PLANS.items():
        log(f"building {name} ...")
        model = bench.build(plan)
        out[f"{name}, PyTorch"] = model
        for fmt in ("onnx", "openvino"):
            folder = tmp / f"{len(out)}-{fmt}"
            export_model(fmt, bench, model, plan, folder, {"plan": plan.to_dict()}, log=log)
            manifest, session = open_artifact(folder, THREADS)
            out[f"{name}, {fmt} artifact"] = ArtifactModel(session, bench.model.config)
            manifests[f"{name}, {fmt} artifact"] = manifest["verification"]
            FORMATS[f"{name}, {fmt} artifact"] = manifest_format(manifest)
    return out, manifests


def exported(bench, specs: list[str]) -> tuple[dict, dict]:
    """LABEL=DIR artifacts written by `slimformer export --format onnx|openvino`, loaded from their
    sha256-checked files as a user runs them."""
    from slimformer.searcher.devices.artifacts import ArtifactModel, open_artifact

    out, manifests = {}, {}
    for spec in specs:
        label, _, folder = spec.partition("=")
        if not label or not folder:
            sys.exit(f"peers.py: --artifact wants LABEL=DIR, got {spec!r}")
        manifest, session = open_artifact(Path(folder), THREADS)
        out[label] = ArtifactModel(session, bench.model.config)
        manifests[label] = manifest["verification"]
        FORMATS[label] = manifest_format(manifest)
    return out, manifests


def runner_of(model, inputs):
    from slimformer.searcher.devices.artifacts import ArtifactModel
    from slimformer.searcher.devices.runtime import ArtifactRunner

    if isinstance(model, ArtifactModel):
        return ArtifactRunner(model.session, inputs)
    return lambda: model(**inputs)


def main() -> None:
    from slimformer.searcher.config import load_study_config
    from slimformer.searcher.devices.latency import measure_latency
    from slimformer.searcher.problem.workbench import Workbench

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", action="append", default=[], metavar="LABEL=DIR",
                    help="an exported onnx/openvino artifact to time beside the peers (repeatable)")
    args = ap.parse_args()
    started, load_start = time.time(), load()
    torch.set_num_threads(THREADS)

    def log(msg):
        print(f"[{time.time() - started:5.0f} s] {msg}", file=sys.stderr, flush=True)

    cfg = load_study_config(HERE.parent / "studies/quickstart.yaml")
    bench = Workbench(cfg, log=log)
    with tempfile.TemporaryDirectory(prefix="slimformer-peers-") as tmp:
        models = peers(bench, Path(tmp))
        plans, checks = slimformer_plans(bench, Path(tmp), log)
        models.update(plans)
        given, given_checks = exported(bench, args.artifact)
        models.update(given)
        checks.update(given_checks)
        log(f"timing {len(models)} runners, {ROUNDS} interleaved rounds ...")
        runners = {name: runner_of(m, bench.inputs) for name, m in models.items()}
        stock = ("PyTorch float32, SDPA attention", "PyTorch float32, eager attention")
        lat = measure_latency(runners, baseline=stock[1], rounds=ROUNDS, warmup=3, threads=THREADS)
        base = min(stock, key=lambda s: lat[s].median_ms)
        lat = {k: v for k, v in lat.items()}
        base_samples = lat[base].samples_ms
        rows = []
        for name in models:
            ratios = sorted(b / c for b, c in zip(base_samples, lat[name].samples_ms))
            rows.append({"runner": name, "format": FORMATS.get(name, "float32"), "quality": None, "median_ms": lat[name].median_ms, "p10_ms": lat[name].p10_ms,
                         "p90_ms": lat[name].p90_ms, "speedup": ratios[len(ratios) // 2],
                         "speedup_p10": ratios[len(ratios) // 10], "speedup_p90": ratios[(9 * len(ratios)) // 10]})
        write(rows, base, checks, bench.facts(), load_start, time.time() - started)  # timings first: quality is slow
        test = bench.test[:PAIRS // bench.cfg.data.batch_size] if PAIRS else bench.test
        for row, m in zip(rows, models.values()):
            log(f"quality of {row['runner']} on STS-B dev ...")
            with torch.inference_mode():
                row["quality"] = bench.task.quality(m, test)["quality"]
    ref = rows[0]["quality"]
    for r in rows:
        r["quality_change"] = r["quality"] - ref
    write(rows, base, checks, bench.facts(), load_start, time.time() - started)


def write(rows, base, checks, facts, load_start, seconds) -> None:
    from slimformer.searcher.devices import onnxruntime, openvino

    (RESULTS / "peers_results.json").write_text(json.dumps(
        {"rows": rows, "baseline": base, "artifact_checks": checks, "device": facts, "rounds": ROUNDS,
         "openvino": openvino.RUNTIME.version(), "onnxruntime": onnxruntime.RUNTIME.version(), "seconds": seconds},
        indent=1, default=str))
    lines = ["# One-knob peers vs slimformer plans (all-MiniLM-L6-v2, STS-B dev)", "",
             f"Command: `ROUNDS={ROUNDS} PAIRS={PAIRS} python -m benchmarks.peers` ({seconds / 60:.1f} min). Batch 1, 128 tokens, {THREADS} threads, "
             f"{ROUNDS} interleaved rounds of every runner in one process. Speedup: median (p10-p90) of per-round "
             f"ratios against the faster stock PyTorch float32 setting of this run (**{base}**). Quality: Spearman x100 "
             f"on STS-B dev ({'the first ' + str(PAIRS) + ' pairs of' if PAIRS else 'all of'} the quickstart's data.test, "
             "length-sorted), change against stock PyTorch float32.", "",
             "Format: what each runner really ran in (OpenVINO's inference precision read back after compiling; an "
             "artifact's from its manifest)." + (" Calibration time: " + ", ".join(
                 f"{k} {v:.0f} s" for k, v in CALIBRATION_S.items()) + "." if CALIBRATION_S else ""), "",
             "| runner | format | quality | change | median ms | speedup (p10-p90) |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        q = "pending | pending" if r["quality"] is None else f"{r['quality']:.2f} | {r['quality_change']:+.2f}"
        lines.append(f"| {r['runner']} | {r['format']} | {q} | {r['median_ms']:.1f} | "
                     f"{r['speedup']:.2f}x ({r['speedup_p10']:.2f}-{r['speedup_p90']:.2f}) |")
    lines += ["", "Artifact checks at export (max abs difference of what the task scores, padding left out, vs the "
              "plan's PyTorch model; "
              "quality re-scored from the artifact on the quickstart's validation split):", "",
              "| artifact | max abs diff | validation quality |", "|---|---:|---:|"]
    for name, c in checks.items():
        diff = c.get("scored_max_abs_diff", c["max_abs_diff"].get("last_hidden_state", float("nan")))
        lines.append(f"| {name} | {diff:.2e} | {c['quality']:.2f} |")
    ms = {r["runner"]: r["median_ms"] for r in rows}
    skew = ms["PyTorch float32, SDPA attention"] / ms["ONNX Runtime float32"]
    lines += ["", f"Stock PyTorch float32 / ONNX Runtime float32 median in this run: {skew:.1f}x (1.19x on a quiet machine, "
              "runtimes_results.md). Far above that, machine load slowed PyTorch's OpenMP threads much more than the "
              "runtimes (no spin-waiting): speedups over PyTorch are then inflated; compare the runners with each other "
              "and rerun on a quiet machine."]
    note = (f"{facts.get('cpu')}, {facts.get('cores')} cores ({', '.join(facts.get('flags', []))}), torch "
            f"{facts.get('torch')}. Load average (1/5/15 min) {load_start} at start, {load()} at the end (2 cores: above "
            f"about 2, other work shared them); absolute ms move with load, paired per-round ratios much less.")
    write_md(str(RESULTS / "peers_results"), lines, note)


if __name__ == "__main__":
    main()
