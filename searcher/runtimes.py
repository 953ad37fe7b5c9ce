"""Deployment runtimes a candidate is timed in (`device.runtime`).

- `eager`: the PyTorch module as built by `apply_plan` (bits 8: torch.ao dynamic int8 Linear,
  bits 16: bfloat16 with cast hooks);
- `compile`: the same module through `torch.compile` (fixed shapes);
- `onnxruntime`: the candidate exported to ONNX with fixed input shapes (the legacy TorchScript
  exporter: it needs no onnxscript and exports MiniLM in seconds) and run by an ONNX Runtime
  CPU session (graph optimizations ALL, `device.threads` intra-op threads, one inter-op thread,
  no spin-waiting so the interleaved timings of other runners are not slowed by idle workers).
  The export is of a float32 copy (pruned shapes, NoAttention and dropped layers included);
  layers the plan stores in int8 become real ORT int8 (`quantize_dynamic`, per-channel
  weights, only the MatMuls of those layers: DynamicQuantizeLinear + MatMulInteger).
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

from .errors import UserError

__all__ = ["RUNTIMES", "check_runtime", "require_onnxruntime", "onnxruntime_version", "float_copy",
           "export_onnx", "ort_session", "ort_runner", "INSTALL_HINT"]

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
def _is_dynamic_int8(module) -> bool:
    try:
        from torch.ao.nn.quantized.dynamic import Linear as QLinear
    except ImportError:
        return False
    return isinstance(module, QLinear)


def float_copy(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """(float32 copy, names of the Linear modules that were int8).

    torch.ao int8 Linears become nn.Linear with their dequantized weights (the int8 grid values,
    so ORT's per-channel re-quantization lands on the same grid); bfloat16 layers are refused."""
    from slimformer.methods.quantize import _bf16_in

    for name, m in model.named_modules():
        if any(h is _bf16_in for h in m._forward_pre_hooks.values()):
            raise UserError(f"bits 16 (bfloat16) layers cannot run with device.runtime onnxruntime ({name}): ONNX "
                            "Runtime's CPU provider has no fast bfloat16 kernels; leave 16 out of space.bits")
    out = copy.deepcopy(model)
    int8: list[str] = []
    for name, m in list(out.named_modules()):
        for child_name, child in list(m.named_children()):
            if _is_dynamic_int8(child):
                w = child.weight().dequantize()
                lin = nn.Linear(w.shape[1], w.shape[0], bias=child.bias() is not None)
                with torch.no_grad():
                    lin.weight.copy_(w)
                    if lin.bias is not None:
                        lin.bias.copy_(child.bias())
                setattr(m, child_name, lin)
                int8.append(f"{name}.{child_name}" if name else child_name)
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


def export_onnx(model: nn.Module, inputs: dict[str, torch.Tensor], path: str | Path,
                int8_modules: list[str] = (), dynamic_seq: bool = False) -> Path:
    """Export a float32 model at these fixed input shapes (`dynamic_seq`: any sequence length);
    the MatMuls of `int8_modules` become dynamic int8 (per-channel weights)."""
    require_onnxruntime()
    path = Path(path)
    names = list(inputs)
    wrapper = _Outputs(model, names).eval()
    raw = path.with_suffix(".float.onnx") if int8_modules else path
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings
        torch.onnx.export(wrapper, tuple(inputs[k] for k in names), str(raw), input_names=names,
                          dynamo=False, opset_version=17, do_constant_folding=True,
                          dynamic_axes={k: {1: "seq"} for k in names} if dynamic_seq else None)
    model.eval()  # the exporter restores the wrapper's (training) mode on its children
    if int8_modules:
        if not quantize_matmuls(raw, path, [f"/m/{n}/" for n in int8_modules]):
            raise RuntimeError("no MatMul of the int8 layers was found in the exported graph")
    return path


def quantize_matmuls(src: Path, dst: Path, prefixes: list[str] | None = None) -> list[str]:
    """Dynamic int8 (per-channel) for the MatMul/Gemm nodes whose names start with a prefix
    (all of them when `prefixes` is None); returns the quantized node names."""
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
            quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8,
                             nodes_to_quantize=nodes or None, op_types_to_quantize=["MatMul", "Gemm"])
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


def ort_runner(model: nn.Module, inputs: dict[str, torch.Tensor], threads: int):
    """(zero-argument callable running the candidate in ORT, the session)."""
    fmodel, int8 = float_copy(model)
    with tempfile.TemporaryDirectory(prefix="slimformer-onnx-") as tmp:
        path = export_onnx(fmodel, inputs, Path(tmp) / "model.onnx", int8)
        session = ort_session(path.read_bytes(), threads)
    used = {i.name for i in session.get_inputs()}  # an input no layer reads is dropped by the export
    feed = {k: v.numpy() for k, v in inputs.items() if k in used}
    return (lambda: session.run(None, feed)), session
