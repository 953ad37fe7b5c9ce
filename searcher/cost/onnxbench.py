"""The microbenchmarks of `searcher.cost.microbench`, run in a runtime that reads ONNX (`slimformer
profile --runtime onnxruntime | openvino`): the same grid and the same raw keys, so the same tables
and cost model.

Every kernel is a small float32 ONNX graph built directly (no export) with a dynamic token axis, one
compiled graph per shape serving all token counts, run by the runtime's own `Runtime.kernel` (the
session or compiled model it times candidates in, int8 made by its own quantizer) in each number format
the runtime profiles here (`Runtime.profile_formats`, a table each): Linear = MatMul + Add, its int8
form what the runtime makes of a candidate's int8 layer (int8, dynamic: ONNX Runtime `quantize_dynamic`
with per-channel s8 weights, OpenVINO NNCF INT8_SYM weight compression with float activations;
int8_static: ONNX Runtime `quantize_static` QDQ, OpenVINO `nncf.quantize`, both calibrated on
CALIBRATION_FEEDS random inputs), and a Linear with no inputs or outputs as
`devices.graph.ZeroWidthLinear` exports (its bias broadcast, no MatMul); GELU in its erf form; the
attention core as the exporter writes it (reshape/transpose, QK^T, scale, softmax, xV, transpose back).
bfloat16 (OpenVINO only: ONNX Runtime refuses bits 16) compiles every kernel graph, activation and
attention included, at bf16 inference precision: OpenVINO sets it for the whole model. The reference
models of the overhead fit are `apply_plan` BERTs built by the runtime's own `build` (its artifact,
loaded as a trial's is; static int8 calibrated on random token ids).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ..devices.registry import get_runtime
from .reference import reference_plans

__all__ = ["linear_job", "activation_job", "attention_job", "overhead_job", "linear_graph", "CALIBRATION_FEEDS"]

CALIBRATION_FEEDS = 4  # random inputs a static int8 kernel or reference model is calibrated on (ranges only)
LINEAR = "lin"  # the kernel Linear's module name: its MatMul node is /m/lin/MatMul (devices.graph.node_prefixes)


def _kernel(runtime: str, nodes, inputs, outputs, inits, threads: int, int8_modules=(), fmt: str = "float32",
            calibration: list[dict] | None = None):
    """run(feed) of one kernel graph in `runtime` (its `Runtime.kernel`) in the number format `fmt`."""
    from onnx import helper, save

    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with tempfile.TemporaryDirectory(prefix=f"slimformer-{runtime}-kernel-") as tmp:
        path = Path(tmp) / "kernel.onnx"
        save(model, str(path))
        return get_runtime(runtime).kernel(path, threads, int8_modules, fmt, calibration)


def linear_graph(k: int, n: int, seed: int):
    """(nodes, inputs, outputs, initializers) of Linear(k, n) on [1, t, k]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    b = numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "b")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "t", k])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, "t", n])
    if k and n:
        w = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32) * 0.05, "w")
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name=f"/m/{LINEAR}/MatMul"),
                 helper.make_node("Add", ["y", "b"], ["z"])]
        return nodes, [x], [z], [b, w]
    # ZeroWidthLinear: zeros of shape [*x.shape[:-1], n] plus the bias
    consts = [numpy_helper.from_array(np.array([v], dtype=np.int64), name) for name, v in
              (("start", 0), ("end", -1), ("n", n))]
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])
    nodes = [helper.make_node("Shape", ["x"], ["shape"]), helper.make_node("Slice", ["shape", "start", "end"], ["lead"]),
             helper.make_node("Concat", ["lead", "n"], ["out_shape"], axis=0),
             helper.make_node("ConstantOfShape", ["out_shape"], ["zeros"], value=zero),
             helper.make_node("Add", ["zeros", "b"], ["z"])]
    return nodes, [x], [z], [b, *consts]


def _runner(run, feed):
    return lambda: run(feed)


def linear_job(runtime: str, dt: str, k: int, n: int, tokens, threads: int):
    def make():
        # int8 layers keep zero-width projections in float32
        int8 = (LINEAR,) if dt in ("int8", "int8_static") and k and n else ()
        rng = np.random.default_rng(k * 7919 + n)
        calibration = [{"x": rng.standard_normal((1, 8, k)).astype(np.float32)} for _ in range(CALIBRATION_FEEDS)]
        run = _kernel(runtime, *linear_graph(k, n, k * 7919 + n), threads, int8, dt,
                      calibration if dt == "int8_static" and int8 else None)
        return [(("linear", dt, t, k, n), _runner(run, {"x": rng.standard_normal((1, t, k)).astype(np.float32)}))
                for t in tokens]

    return make


def activation_job(runtime: str, dt: str, tokens, widths, threads: int):
    def make():
        from onnx import TensorProto, helper, numpy_helper

        c = [numpy_helper.from_array(np.array(v, dtype=np.float32), name)
             for name, v in (("r2", 2 ** 0.5), ("one", 1.0), ("half", 0.5))]
        nodes = [helper.make_node("Div", ["x", "r2"], ["a"]), helper.make_node("Erf", ["a"], ["e"]),
                 helper.make_node("Add", ["e", "one"], ["p"]), helper.make_node("Mul", ["x", "p"], ["m"]),
                 helper.make_node("Mul", ["m", "half"], ["y"])]
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["t", "w"])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["t", "w"])
        run = _kernel(runtime, nodes, [x], [y], c, threads, fmt=dt)
        rng = np.random.default_rng(0)
        return [(("activation", dt, t, w), _runner(run, {"x": rng.standard_normal((t, w)).astype(np.float32)}))
                for t in tokens for w in widths]

    return make


def attention_job(runtime: str, dt: str, d: int, h: int, seqs, threads: int):
    def make():
        from onnx import TensorProto, helper, numpy_helper

        consts = [numpy_helper.from_array(np.array([1, -1, h, d], dtype=np.int64), "split"),
                  numpy_helper.from_array(np.array([1, -1, h * d], dtype=np.int64), "merge"),
                  numpy_helper.from_array(np.array(d ** -0.5, dtype=np.float32), "scale")]
        nodes = []
        for name, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
            nodes += [helper.make_node("Reshape", [name, "split"], [f"{name}4"]),
                      helper.make_node("Transpose", [f"{name}4"], [f"{name}t"], perm=perm)]
        nodes += [helper.make_node("MatMul", ["qt", "kt"], ["s"]), helper.make_node("Mul", ["s", "scale"], ["ss"]),
                  helper.make_node("Softmax", ["ss"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "vt"], ["o"]),
                  helper.make_node("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]),
                  helper.make_node("Reshape", ["ot", "merge"], ["y"])]
        ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, "s", h * d]) for n in "qkv"]
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "s", h * d])
        run = _kernel(runtime, nodes, ins, [y], consts, threads, fmt=dt)
        rng = np.random.default_rng(h * 100 + d)
        out = []
        for s in seqs:
            feed = {n: rng.standard_normal((1, s, h * d)).astype(np.float32) for n in "qkv"}
            out.append((("attention", dt, d, h, s), _runner(run, feed)))
        return out

    return make


def overhead_job(runtime: str, hidden: int, head_dims, dtypes, tokens, threads: int):
    """`microbench`'s reference models, built once by the runtime's own `build` and loaded as a trial's
    artifact is (cached across passes; static int8 ones calibrated on CALIBRATION_FEEDS random token ids)."""
    made: list = []

    def make():
        if made:
            return made
        import torch
        from slimformer.methods import apply_plan

        base, plans = reference_plans(hidden, head_dims, dtypes, tokens)
        example = {"input_ids": torch.randint(0, 512, (1, min(tokens))),
                   "attention_mask": torch.ones(1, min(tokens), dtype=torch.long)}
        rng = np.random.default_rng(hidden)
        ids = [rng.integers(0, 512, (1, min(tokens)), dtype=np.int64) for _ in range(CALIBRATION_FEEDS)]
        calibration = [{"input_ids": x, "attention_mask": np.ones_like(x)} for x in ids]
        sessions = {what: get_runtime(runtime).artifact_session(apply_plan(base, plan), example, threads,
                                                                {"calibration": calibration})
                    for what, plan in plans.items()}
        for t in tokens:
            ids = np.random.default_rng(t).integers(0, 512, (1, t), dtype=np.int64)
            feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
            made.extend((("model", hidden, t, *what), _runner(s, feed)) for what, s in sessions.items())
        return made

    return make
