"""ONNX Runtime (`device.runtime: onnxruntime`, `pip install 'slimformer[onnx]'`).

The candidate's float32 copy is exported to ONNX (`searcher.devices.graph`: HF names, dynamic batch
and sequence axes) and run by an ONNX Runtime CPU session (graph optimizations ALL, `device.threads`
intra-op threads, one inter-op thread, no spin-waiting so the interleaved timings of other runners
are not slowed by idle workers). Layers the plan stores in int8 become real ORT int8 (`quantize_dynamic`,
only the MatMuls of those layers: DynamicQuantizeLinear + MatMulInteger), with the weights the plan's
`int8_weights` names: signed per-channel (`s8`, default) or unsigned 7-bit (`u8`, reduce_range), a
choice `space.int8_weights` searches. With the plan's `int8_scheme` static, those MatMuls get static QDQ
quantization instead (`quantize_static`, QDQ format: uint8 activations with MinMax scales calibrated on
the study's calibration inputs, int8 per-channel weights). bits 16 is refused (ORT's CPU
provider has no fast bfloat16 kernels); simulated 4/3/2 bits run in float32 as in eager. The artifact
(`export --format onnx`) is model.onnx: the graph the latency runner ran.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from slimformer.methods.plan import INT8_WEIGHTS as PLAN_INT8_WEIGHTS

from .runtime import ArtifactSession, Runtime, module_version, optional_module

__all__ = ["RUNTIME", "INSTALL_HINT", "INT8_WEIGHTS", "quantize_matmuls", "ort_session", "ort_runner", "kernel"]

INSTALL_HINT = "device.runtime onnxruntime needs: pip install 'slimformer[onnx]'"
NO_BF16 = "ONNX Runtime's CPU provider has no fast bfloat16 kernels"


# ORT's dynamic int8 weight settings per plan.int8_weights: signed per-channel weights, or unsigned 7-bit
# ones (reduce_range), which avoid the saturation of u8 x s8 products on CPUs without VNNI (ONNX
# Runtime's quantization docs)
INT8_WEIGHTS = {"s8": {"weight_type": "QInt8", "per_channel": True, "reduce_range": False},
                "u8": {"weight_type": "QUInt8", "per_channel": True, "reduce_range": True}}
assert tuple(INT8_WEIGHTS) == PLAN_INT8_WEIGHTS, "one setting per plan.int8_weights choice"




class _Feeds:
    """The calibration inputs as ONNX Runtime's CalibrationDataReader reads them."""

    def __init__(self, feeds: list[dict]):
        self.it = iter(feeds)

    def get_next(self):
        return next(self.it, None)


def quantize_matmuls(src: Path, dst: Path, prefixes: list[str] | None = None, weight_type: str = "s8",
                     calibration: list[dict] | None = None) -> list[str]:
    """Dynamic int8 for the MatMul/Gemm nodes whose names start with a prefix (all of them when
    `prefixes` is None), weights as INT8_WEIGHTS[weight_type]; with `calibration` (input dicts) static QDQ
    int8 of weights and activations instead. Returns the quantized node names."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    graph = onnx.load(str(src)).graph
    inits = {i.name for i in graph.initializer}
    # node names follow the module path (/m/encoder/layer.0/attention/self/query/MatMul): compare with
    # '.' and '/' made the same
    norm = [p.replace(".", "/") for p in prefixes] if prefixes is not None else None
    nodes = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and any(i in inits for i in n.input)
             and (norm is None or any(n.name.replace(".", "/").startswith(p) for p in norm))]
    if prefixes is not None and not nodes:
        return []
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs a pre-processing hint on the root logger
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            w = INT8_WEIGHTS[weight_type]
            if calibration is not None:
                quantize_static(str(src), str(dst), _Feeds(calibration), quant_format=QuantFormat.QDQ,
                                per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                nodes_to_quantize=nodes or None, op_types_to_quantize=["MatMul", "Gemm"])
            else:
                quantize_dynamic(str(src), str(dst), per_channel=w["per_channel"], reduce_range=w["reduce_range"],
                                 weight_type=getattr(QuantType, w["weight_type"]), nodes_to_quantize=nodes or None,
                                 op_types_to_quantize=["MatMul", "Gemm"])
        finally:
            root.setLevel(level)
    return nodes


def ort_session(path: str | Path | bytes, threads: int, config: dict[str, str] | None = None):
    """An ORT CPU session as every runner here uses it; `config`: extra session config entries."""
    ort = optional_module("onnxruntime", INSTALL_HINT)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for key, value in (config or {}).items():
        so.add_session_config_entry(key, value)
    so.log_severity_level = 3
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path), so,
                                providers=["CPUExecutionProvider"])


def build(model, inputs: dict, folder: Path, options: dict) -> dict:
    """model.onnx of a built candidate: its int8 layers as ORT int8, weights as its plan's int8_weights
    (options["int8_weights"] overrides it, for models built elsewhere)."""
    from slimformer.methods import plan_of

    from .graph import calibration_feeds, export_onnx, float_copy, node_prefixes

    plan = plan_of(model)
    weights = options.get("int8_weights") or (plan.int8_weights if plan else PLAN_INT8_WEIGHTS[0])
    static = plan is not None and plan.int8_scheme == "static"
    fmodel, int8 = float_copy(model, RUNTIME.refusal(16))
    path = folder / "model.onnx"
    if not int8:
        export_onnx(fmodel, inputs, path)
        return {"files": ["model.onnx"], "int8_layers": [], "int8_weights": None, "int8_scheme": None}
    calibration = calibration_feeds(options, inputs, "int8_scheme static") if static else None
    raw = export_onnx(fmodel, inputs, folder / "float.onnx")
    if not quantize_matmuls(raw, path, node_prefixes(int8), weights, calibration):
        raise RuntimeError("no MatMul of the int8 layers was found in the exported graph")
    raw.unlink()
    if static:
        weights = f"s8 per channel, uint8 activations (QDQ quantize_static, {len(calibration)} calibration inputs)"
    return {"files": ["model.onnx"], "int8_layers": int8, "int8_weights": weights,
            "int8_scheme": "static" if static else "dynamic"}


def load(files: dict[str, bytes], threads: int) -> ArtifactSession:
    sess = ort_session(files["model.onnx"], threads)
    return ArtifactSession(lambda feed: sess.run(None, feed), [i.name for i in sess.get_inputs()],
                           [o.name for o in sess.get_outputs()])


def kernel(path: Path, threads: int, int8_modules=(), fmt: str = "float32", calibration: list[dict] | None = None):
    """A microbenchmark kernel graph (float32 ONNX, `searcher.cost.onnxbench`) as this runtime runs a
    candidate's, in the format `fmt`: the MatMuls of `int8_modules` through `quantize_matmuls` (s8
    dynamic, or with int8_static QDQ calibrated on the `calibration` feeds), in an `ort_session`; returns
    run(feed). bfloat16 is refused (NO_BF16)."""
    from .graph import node_prefixes

    if fmt == "bfloat16":
        raise ValueError(NO_BF16)
    if int8_modules:
        static = fmt == "int8_static"
        if static and not calibration:
            raise ValueError("an int8_static kernel needs calibration feeds")
        quantized = path.with_name(f"{path.stem}-int8.onnx")
        if not quantize_matmuls(path, quantized, node_prefixes(list(int8_modules)), PLAN_INT8_WEIGHTS[0],
                                calibration if static else None):
            raise RuntimeError("no MatMul of the int8 modules was found in the kernel graph")
        path = quantized
    sess = ort_session(path.read_bytes(), threads)
    return lambda feed: sess.run(None, feed)


def ort_runner(model, inputs: dict, threads: int, weight_type: str = "s8"):
    """(zero-argument callable running the candidate in ORT, its session)."""
    runner = RUNTIME.runner(model, inputs, threads, {"int8_weights": weight_type})
    return runner, runner.session


RUNTIME = Runtime(
    name="onnxruntime", summary="ONNX Runtime, CPU", artifact_format="onnx",
    formats=lambda: {"float32": None, "bfloat16": NO_BF16, "int8": None, "int8_static": None},
    refused_methods={"gptq": "ONNX Runtime re-rounds int8 layers with its own quantize_dynamic"},
    requires=("onnx", "onnxruntime"), install_hint=INSTALL_HINT, profiled=True,
    profiled_formats=("float32", "int8", "int8_static"), reads_int8_weights=True,
    version=lambda: module_version("onnxruntime"), build=build, load=load, kernel=kernel)
