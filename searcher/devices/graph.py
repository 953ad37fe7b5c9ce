"""The ONNX graph of a built candidate, shared by the ONNX Runtime and OpenVINO runtimes.

`float_copy` turns a built candidate into float32 modules (torch.ao int8 Linears become Linears with
their dequantized int8-grid weights, and are named so the runtime re-quantizes exactly those layers;
a Linear left with no inputs or outputs computes its bias without a MatMul). `export_onnx` writes it
with the legacy TorchScript exporter (no onnxscript needed; MiniLM in seconds), the Hugging Face input
and output names and dynamic batch and sequence axes (timed within 2% of a fixed-shape graph in ORT).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError

__all__ = ["float_copy", "ZeroWidthLinear", "export_onnx", "output_names", "require_onnx", "node_prefixes",
           "has_bf16", "calibration_feeds"]

ONNX_HINT = "exporting to ONNX needs: pip install onnx (or 'slimformer[onnx]')"


def require_onnx() -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise UserError(ONNX_HINT) from None


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


def float_copy(model: nn.Module, refusal: str | None = None) -> tuple[nn.Module, list[str]]:
    """(float32 copy, names of the Linear modules that were int8).

    torch.ao int8 Linears become nn.Linear with their dequantized weights (the int8 grid values,
    so a per-channel re-quantization lands on the same grid); bfloat16 layers raise UserError with
    `refusal` (the runtime's reason), or without one become float32 layers holding their bf16-rounded
    weights (a runtime that then runs the graph in bfloat16, OpenVINO, sets that precision). A graph does not read the plan's `attention`: the copy runs the
    implementation the model was built from."""
    from slimformer.methods.quantize import bf16_to_float32, is_bf16
    from slimformer.methods.registry import CONFIG_KEY
    from slimformer.methods.size import is_dynamic_int8
    from slimformer.methods.surgery import set_attention

    for name, m in model.named_modules():
        if is_bf16(m) and refusal is not None:
            raise UserError(f"{refusal} (layer {name}); leave 16 out of space.bits, or export --format pytorch")
    out = copy.deepcopy(model)
    bf16_to_float32(out)
    source = (getattr(getattr(out, "config", None), CONFIG_KEY, None) or {}).get("source_attention")
    if source is not None:
        set_attention(out, source)
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


def export_onnx(model: nn.Module, inputs: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Export a float32 model with the Hugging Face input and output names and dynamic batch and
    sequence axes."""
    require_onnx()
    path = Path(path)
    names = list(inputs)
    wrapper = _Outputs(model, names).eval()
    outputs = output_names(model, inputs)
    axes = {k: ({0: "batch", 1: "sequence"} if v.dim() == 2 else {0: "batch"}) for k, v in inputs.items()}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings
        torch.onnx.export(wrapper, tuple(inputs[k] for k in names), str(path), input_names=names,
                          output_names=outputs, dynamo=False, opset_version=17, do_constant_folding=True,
                          dynamic_axes=axes)
    model.eval()  # the exporter restores the wrapper's (training) mode on its children
    return path




def has_bf16(model: nn.Module) -> bool:
    """Whether a built candidate has bits-16 (bfloat16) layers."""
    from slimformer.methods.quantize import is_bf16

    return any(is_bf16(m) for m in model.modules())


def calibration_feeds(options: dict, inputs: dict, what: str) -> list[dict]:
    """The calibration inputs a static int8 build reads (options["calibration"]: {input name: numpy}
    dicts, the study's calibration set as Workbench.runtime_options gives it), restricted to the graph's
    inputs; ValueError naming `what` when there are none."""
    feeds = options.get("calibration") or []
    if not feeds:
        raise ValueError(f"{what} needs calibration inputs: set data.calibration in the study")
    return [{k: v for k, v in feed.items() if k in inputs} for feed in feeds]


def node_prefixes(modules: list[str]) -> list[str]:
    """The graph-node name prefixes of these modules (/m/encoder/layer/0/...: '.' written as '/')."""
    return [f"/m/{n}/".replace(".", "/") for n in modules]
