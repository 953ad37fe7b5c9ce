"""Deployment runtimes a candidate is timed in (`device.runtime`).

- `eager`: the PyTorch module as built by `apply_plan` (bits 8: torch.ao dynamic int8 Linear,
  bits 16: bfloat16 with cast hooks);
- `compile`: the same module through `torch.compile` (fixed shapes);
- `onnxruntime`: the candidate exported to ONNX with the Hugging Face input/output names and dynamic
  batch and sequence axes (the legacy TorchScript exporter: it needs no onnxscript and exports MiniLM
  in seconds; the dynamic graph timed within 2% of a fixed-shape one) and run by an ONNX Runtime
  CPU session (graph optimizations ALL, `device.threads` intra-op threads, one inter-op thread,
  no spin-waiting so the interleaved timings of other runners are not slowed by idle workers).
  The export is of a float32 copy (pruned shapes, NoAttention and dropped layers included);
  layers the plan stores in int8 become real ORT int8 (`quantize_dynamic`, per-channel
  weights, signed or unsigned 7-bit (INT8_WEIGHTS), only the MatMuls of those layers:
  DynamicQuantizeLinear + MatMulInteger).
  bits 16 is refused with this runtime (ORT's CPU provider has no fast bfloat16 kernels);
  simulated 4/3/2 bits run in float32 as in eager (flagged `simulated`).
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError

__all__ = ["RUNTIMES", "check_runtime", "require_onnxruntime", "onnxruntime_version", "float_copy",
           "ZeroWidthLinear", "export_onnx", "output_names", "quantize_matmuls", "ort_session", "ort_runner", "INSTALL_HINT",
           "INT8_WEIGHTS"]

RUNTIMES = ("eager", "compile", "onnxruntime")
INSTALL_HINT = "device.runtime onnxruntime needs: pip install 'slimformer[onnx]'"


def require_onnxruntime():
    """The `onnxruntime` module, or UserError with the install line."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return onnxruntime


def onnxruntime_version() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__


def check_runtime(runtime: str) -> None:
    """UserError for an unknown runtime or one that is not installed."""
    if runtime not in RUNTIMES:
        raise UserError(f"unknown runtime {runtime!r}; allowed: {', '.join(RUNTIMES)}")
    if runtime == "onnxruntime":
        require_onnxruntime()


# ----- a float32 copy of a built candidate ---------------------------------------------------
class ZeroWidthLinear(nn.Module):
    """A Linear with no inputs or no outputs (all heads or all FFN neurons pruned): it computes its bias
    (or an empty tensor) without a MatMul on an empty weight, which OpenVINO's ONNX reader rejects."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.out_features = linear.out_features
        self.bias = nn.Parameter(linear.bias.detach().clone()) if linear.bias is not None else None

    def forward(self, x):
        out = x.new_zeros(*x.shape[:-1], self.out_features)
        return out + self.bias if self.bias is not None else out


def float_copy(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """(float32 copy, names of the Linear modules that were int8).

    torch.ao int8 Linears become nn.Linear with their dequantized weights (the int8 grid values,
    so ORT's per-channel re-quantization lands on the same grid); bfloat16 layers are refused."""
    from slimformer.methods.quantize import is_bf16
    from slimformer.methods.size import is_dynamic_int8

    for name, m in model.named_modules():
        if is_bf16(m):
            raise UserError(f"bits 16 (bfloat16) layers cannot run with device.runtime onnxruntime ({name}): ONNX "
                            "Runtime's CPU provider has no fast bfloat16 kernels; leave 16 out of space.bits")
    out = copy.deepcopy(model)
    int8: list[str] = []
    for name, m in list(out.named_modules()):
        for child_name, child in list(m.named_children()):
            if is_dynamic_int8(child):
                w = child.weight().dequantize()
                lin = nn.Linear(w.shape[1], w.shape[0], bias=child.bias() is not None)
                with torch.no_grad():
                    lin.weight.copy_(w)
                    if lin.bias is not None:
                        lin.bias.copy_(child.bias())
                setattr(m, child_name, lin)
                int8.append(f"{name}.{child_name}" if name else child_name)
    for name, m in list(out.named_modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, nn.Linear) and 0 in (child.in_features, child.out_features):
                setattr(m, child_name, ZeroWidthLinear(child))
                full = f"{name}.{child_name}" if name else child_name
                int8 = [n for n in int8 if n != full]
    return out.float().eval(), int8


class _Outputs(nn.Module):
    """Keyword inputs in a fixed order, every tensor output as a tuple (nothing is pruned away)."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.m, self.names = model, names

    def forward(self, *args):
        out = self.m(**dict(zip(self.names, args)))
        values = out.to_tuple() if hasattr(out, "to_tuple") else (out if isinstance(out, tuple) else (out,))
        return tuple(v for v in values if torch.is_tensor(v))


def output_names(model: nn.Module, inputs: dict[str, torch.Tensor]) -> list[str]:
    """The names of the model's tensor outputs, in order (last_hidden_state, pooler_output; logits)."""
    with torch.no_grad():
        out = model(**inputs)
    if hasattr(out, "keys"):
        return [k for k in out.keys() if torch.is_tensor(out[k])]
    return [f"output_{i}" for i in range(len(out) if isinstance(out, tuple) else 1)]


def export_onnx(model: nn.Module, inputs: dict[str, torch.Tensor], path: str | Path,
                int8_modules: list[str] = (), weight_type: str = "s8") -> Path:
    """Export a float32 model with the Hugging Face input and output names and dynamic batch and
    sequence axes; the MatMuls of `int8_modules` become dynamic int8 (`weight_type`, see INT8_WEIGHTS)."""
    require_onnxruntime()
    path = Path(path)
    names = list(inputs)
    wrapper = _Outputs(model, names).eval()
    outputs = output_names(model, inputs)
    axes = {k: ({0: "batch", 1: "sequence"} if v.dim() == 2 else {0: "batch"}) for k, v in inputs.items()}
    raw = path.with_suffix(".float.onnx") if int8_modules else path
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings
        torch.onnx.export(wrapper, tuple(inputs[k] for k in names), str(raw), input_names=names,
                          output_names=outputs, dynamo=False, opset_version=17, do_constant_folding=True,
                          dynamic_axes=axes)
    model.eval()  # the exporter restores the wrapper's (training) mode on its children
    if int8_modules:
        if not quantize_matmuls(raw, path, [f"/m/{n}/" for n in int8_modules], weight_type):
            raise RuntimeError("no MatMul of the int8 layers was found in the exported graph")
        raw.unlink()
    return path


# ORT's dynamic int8 weight settings: signed per-channel weights, or unsigned 7-bit ones (reduce_range),
# which avoid the saturation of u8 x s8 products on CPUs without VNNI (ONNX Runtime's quantization docs)
INT8_WEIGHTS = {"s8": {"weight_type": "QInt8", "per_channel": True, "reduce_range": False},
                "u8": {"weight_type": "QUInt8", "per_channel": True, "reduce_range": True}}


def quantize_matmuls(src: Path, dst: Path, prefixes: list[str] | None = None, weight_type: str = "s8") -> list[str]:
    """Dynamic int8 for the MatMul/Gemm nodes whose names start with a prefix (all of them when
    `prefixes` is None), weights as INT8_WEIGHTS[weight_type]; returns the quantized node names."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

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
            quantize_dynamic(str(src), str(dst), per_channel=w["per_channel"], reduce_range=w["reduce_range"],
                             weight_type=getattr(QuantType, w["weight_type"]), nodes_to_quantize=nodes or None,
                             op_types_to_quantize=["MatMul", "Gemm"])
        finally:
            root.setLevel(level)
    return nodes


def ort_session(path: str | Path | bytes, threads: int):
    ort = require_onnxruntime()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path), so,
                                providers=["CPUExecutionProvider"])


def ort_runner(model: nn.Module, inputs: dict[str, torch.Tensor], threads: int, weight_type: str = "s8"):
    """(zero-argument callable running the candidate in ORT, the session)."""
    fmodel, int8 = float_copy(model)
    with tempfile.TemporaryDirectory(prefix="slimformer-onnx-") as tmp:
        path = export_onnx(fmodel, inputs, Path(tmp) / "model.onnx", int8, weight_type)
        session = ort_session(path.read_bytes(), threads)
    used = {i.name for i in session.get_inputs()}  # an input no layer reads is dropped by the export
    feed = {k: v.numpy() for k, v in inputs.items() if k in used}
    return (lambda: session.run(None, feed)), session
