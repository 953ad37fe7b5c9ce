"""The microbenchmarks of `searcher.cost.microbench`, run through ONNX Runtime (`slimformer profile
--runtime onnxruntime`): the same grid and the same raw keys, so the same tables and cost model.

Every kernel is a small ONNX graph built directly (no export) with a dynamic token axis, one
session per shape serving all token counts: Linear = MatMul + Add in float32, and its dynamic
int8 form as `quantize_dynamic` writes it (per-channel weights: DynamicQuantizeLinear +
MatMulInteger + rescale, as a candidate's int8 layers get); GELU in its erf form (ORT fuses it); the attention core as
the exporter writes it (reshape/transpose, QK^T, scale, softmax, xV, transpose back). The
reference models of the overhead fit are `apply_plan` BERTs exported by `searcher.devices.onnxruntime`
with a dynamic sequence axis. There is no bfloat16 (the runtime refuses bits 16).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from .reference import reference_plans

__all__ = ["DTYPES", "linear_job", "activation_job", "attention_job", "overhead_job"]

DTYPES = ("float32", "int8")


def _session(graph_nodes, inputs, outputs, inits, threads: int):
    from onnx import helper

    from ..devices.onnxruntime import ort_session

    graph = helper.make_graph(graph_nodes, "g", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return ort_session(model.SerializeToString(), threads)


def _runner(sess, feed):
    names = {i.name for i in sess.get_inputs()}  # an input the graph does not use was dropped by the export
    feed = {k: v for k, v in feed.items() if k in names}
    return lambda: sess.run(None, feed)


def linear_job(dt: str, k: int, n: int, tokens, threads: int):
    def make():
        from onnx import TensorProto, helper, numpy_helper

        rng = np.random.default_rng(k * 7919 + n)
        weight = rng.standard_normal((k, n)).astype(np.float32) * 0.05
        b = numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "b")
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "t", k])
        z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, "t", n])
        if dt == "int8" and k and n:  # what quantize_dynamic writes (per-channel int8 weights)
            scale = np.maximum(np.abs(weight).max(axis=0), 1e-8) / 127
            inits = [b, numpy_helper.from_array(np.round(weight / scale).astype(np.int8), "wq"),
                     numpy_helper.from_array(scale.astype(np.float32), "ws"),
                     numpy_helper.from_array(np.zeros(n, dtype=np.int8), "wz")]
            nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
                     helper.make_node("MatMulInteger", ["xq", "wq", "xz", "wz"], ["acc"]),
                     helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
                     helper.make_node("Mul", ["xs", "ws"], ["s"]), helper.make_node("Mul", ["accf", "s"], ["y"]),
                     helper.make_node("Add", ["y", "b"], ["z"])]
        else:
            inits = [b, numpy_helper.from_array(weight, "w")]
            nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Add", ["y", "b"], ["z"])]
        sess = _session(nodes, [x], [z], inits, threads)
        return [(("linear", dt, t, k, n), _runner(sess, {"x": rng.standard_normal((1, t, k)).astype(np.float32)}))
                for t in tokens]

    return make


def activation_job(tokens, widths, threads: int):
    def make():
        from onnx import TensorProto, helper, numpy_helper

        c = [numpy_helper.from_array(np.array(v, dtype=np.float32), name)
             for name, v in (("r2", 2 ** 0.5), ("one", 1.0), ("half", 0.5))]
        nodes = [helper.make_node("Div", ["x", "r2"], ["a"]), helper.make_node("Erf", ["a"], ["e"]),
                 helper.make_node("Add", ["e", "one"], ["p"]), helper.make_node("Mul", ["x", "p"], ["m"]),
                 helper.make_node("Mul", ["m", "half"], ["y"])]
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["t", "w"])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["t", "w"])
        sess = _session(nodes, [x], [y], c, threads)
        rng = np.random.default_rng(0)
        return [(("activation", "float32", t, w), _runner(sess, {"x": rng.standard_normal((t, w)).astype(np.float32)}))
                for t in tokens for w in widths]

    return make


def attention_job(d: int, h: int, seqs, threads: int):
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
        sess = _session(nodes, ins, [y], consts, threads)
        rng = np.random.default_rng(h * 100 + d)
        out = []
        for s in seqs:
            feed = {n: rng.standard_normal((1, s, h * d)).astype(np.float32) for n in "qkv"}
            out.append((("attention", "float32", d, h, s), _runner(sess, feed)))
        return out

    return make


def overhead_job(hidden: int, head_dims, dtypes, tokens, threads: int):
    """`microbench._overhead_job`'s reference models, exported to ORT once (cached across passes)."""
    made: list = []

    def make():
        if made:
            return made
        import torch
        from slimformer.methods import apply_plan

        from ..devices.onnxruntime import RUNTIME, ort_session

        base, plans = reference_plans(hidden, head_dims, dtypes, tokens)
        example = {"input_ids": torch.randint(0, 512, (1, min(tokens))), "attention_mask": torch.ones(1, min(tokens),
                                                                                                         dtype=torch.long)}
        sessions = {}
        with tempfile.TemporaryDirectory(prefix="slimformer-ortbench-") as tmp:
            for i, (what, plan) in enumerate(plans.items()):
                folder = Path(tmp) / f"m{i}"
                folder.mkdir()
                RUNTIME.build(apply_plan(base, plan), example, folder, {})
                sessions[what] = ort_session((folder / "model.onnx").read_bytes(), threads)
        for t in tokens:
            ids = np.random.default_rng(t).integers(0, 512, (1, t), dtype=np.int64)
            feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
            made.extend((("model", hidden, t, *what), _runner(s, feed)) for what, s in sessions.items())
        return made

    return make
