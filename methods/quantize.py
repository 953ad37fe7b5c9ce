"""Per-layer weight quantization.

bits 32: float32 (unchanged); 16: bfloat16 weights and compute (real kernels; inputs and
outputs of the layer are cast so neighbours may use other precisions); 8: int8 weights with
PyTorch's dynamic-quantized Linear (a real int8 GEMM kernel, per-channel scales, activations
quantized per batch at run time); 4/3/2: SIMULATED round-to-nearest, symmetric, group-wise
along the input dimension: the weights are rounded to the low-bit grid but stored and
computed in float32, so quality and size are real while speed is not.

Rounding (plan.quant_method): "rtn" rounds each weight to the nearest grid point; "gptq"
(methods/gptq.py) rounds layer by layer from calibration data, each layer's inputs coming from
the already-quantized layers before it; for bits 8 the GPTQ-rounded int8 values and per-channel
scales are loaded into the same dynamic int8 Linear (still the real kernel). plan.smooth > 0
first applies SmoothQuant scaling (methods/smooth.py) to the layers at 8/4/3/2 bits.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from .adapters import get_adapter
from .calibration import Context
from .surgery import is_conv1d

__all__ = ["QuantSpec", "quantize", "fake_quantize_weight", "int8_available", "is_bf16", "bf16_to_float32",
           "BITS_ATTR"]

BITS_ATTR = "_slimformer_bits"


@dataclass(frozen=True)
class QuantSpec:
    bits: tuple[int, ...]  # per ORIGINAL layer
    layers: tuple[int, ...]
    group_size: int = 64
    method: str = "rtn"
    smooth: float = 0.0
    int8_scheme: str = "dynamic"  # "static": a runtime calibrates the int8 layers' activations (plan.int8_scheme)

    @classmethod
    def from_plan(cls, plan) -> QuantSpec | None:
        if all(plan.bits[i] == 32 for i in plan.layers):
            return None
        return cls(plan.bits, plan.layers, plan.group_size, plan.quant_method, plan.smooth, plan.int8_scheme)


def int8_available() -> bool:
    try:
        from torch.ao.nn.quantized.dynamic import Linear  # noqa: F401
    except ImportError:
        return False
    engines = torch.backends.quantized.supported_engines
    return any(e in engines for e in ("x86", "fbgemm", "onednn", "qnnpack"))


def fake_quantize_weight(w: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Symmetric round-to-nearest per (output row, group of `group_size` inputs)."""
    out_f, in_f = w.shape
    g = group_size if in_f % group_size == 0 else in_f
    groups = w.float().reshape(out_f, in_f // g, g)
    qmax = 2 ** (bits - 1) - 1
    scale = groups.abs().amax(-1, keepdim=True).clamp_min(1e-8) / qmax
    q = (groups / scale).round().clamp(-qmax - 1, qmax)
    return (q * scale).reshape(out_f, in_f).to(w.dtype)


def _conv1d_to_linear(layer: nn.Module) -> None:
    for name, child in list(layer.named_children()):
        if is_conv1d(child):
            lin = nn.Linear(child.weight.shape[0], child.nf)
            with torch.no_grad():
                lin.weight.copy_(child.weight.t())
                lin.bias.copy_(child.bias)
            setattr(layer, name, lin)
        else:
            _conv1d_to_linear(child)


def _cast(obj, dtype):
    if torch.is_tensor(obj):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, tuple):
        return tuple(_cast(o, dtype) for o in obj)
    if isinstance(obj, list):
        return [_cast(o, dtype) for o in obj]
    if isinstance(obj, dict):
        return {k: _cast(v, dtype) for k, v in obj.items()}
    return obj


def _bf16_in(module, args, kwargs):
    return _cast(args, torch.bfloat16), _cast(kwargs, torch.bfloat16)


def is_bf16(module: nn.Module) -> bool:
    """A layer that runs in bfloat16 (bits 16: its inputs are cast on the way in)."""
    return any(h is _bf16_in for h in module._forward_pre_hooks.values())


def bf16_to_float32(module: nn.Module) -> None:
    """Every bfloat16 layer under `module` made float32 again (its bf16-rounded weights kept, the casts
    removed): how a graph runtime that sets its inference precision model-wide reads a bits-16 layer."""
    for m in module.modules():
        if is_bf16(m):
            for hooks, fn in ((m._forward_pre_hooks, _bf16_in), (m._forward_hooks, _fp32_out)):
                for key in [k for k, h in hooks.items() if h is fn]:
                    del hooks[key]
            m.to(torch.float32)


def _fp32_out(module, args, output):
    return _cast(output, torch.float32)


def _to_bf16(layer: nn.Module) -> None:
    layer.to(torch.bfloat16)
    layer.register_forward_pre_hook(_bf16_in, with_kwargs=True)
    layer.register_forward_hook(_fp32_out)


def _to_int8(layer: nn.Module) -> None:
    if not int8_available():
        raise RuntimeError("bits=8 needs PyTorch's dynamic int8 Linear (torch.ao quantized engine); not available")
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    _conv1d_to_linear(layer)
    # by name, skipping empty projections (0 heads/neurons kept): per-channel quantization fails on them
    names = {name: per_channel_dynamic_qconfig for name, m in layer.named_modules()
             if isinstance(m, nn.Linear) and m.weight.numel()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao dynamic quantization is deprecated upstream
        quantize_dynamic(layer, names, dtype=torch.qint8, inplace=True)


def _to_simulated(layer: nn.Module, bits: int, group_size: int, structure_only: bool) -> None:
    for module in layer.modules():
        if isinstance(module, nn.Linear) or is_conv1d(module):
            w = module.weight.data
            if not structure_only:
                w2 = fake_quantize_weight(w.t() if is_conv1d(module) else w, bits, group_size)
                module.weight.data = w2.t().contiguous() if is_conv1d(module) else w2
            setattr(module, BITS_ATTR, bits)


def _load_int8(layer: nn.Module, rounded: dict) -> None:
    """Put GPTQ-rounded int8 values and per-row scales into the layer's dynamic int8 Linears."""
    for name, (q, scale) in rounded.items():
        m = layer.get_submodule(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            qw = torch._make_per_channel_quantized_tensor(
                q.to(torch.int8), scale[:, 0].double(), torch.zeros(len(q), dtype=torch.int64), 0)
        m.set_weight_bias(qw, m.bias())


def _load_simulated(layer: nn.Module, rounded: dict, bits: int) -> None:
    from .gptq import dequantize

    for name, (q, scale) in rounded.items():
        m = layer.get_submodule(name)
        w = dequantize(q, scale)
        m.weight.data = (w.t() if is_conv1d(m) else w).contiguous().to(m.weight.dtype)
        setattr(m, BITS_ATTR, bits)


def _rounds_from_data(spec: QuantSpec) -> bool:
    """GPTQ or smoothing at <= 8 bits: quantize itself reads calibration batches."""
    return any(spec.bits[i] <= 8 for i in spec.layers) and (spec.method == "gptq" or spec.smooth > 0)


def needs_calibration(spec: QuantSpec) -> bool:
    """GPTQ or smoothing at <= 8 bits, or int8 layers whose activations the runtime calibrates (static)."""
    static = spec.int8_scheme == "static" and any(spec.bits[i] == 8 for i in spec.layers)
    return static or _rounds_from_data(spec)


def quantize(model: nn.Module, spec: QuantSpec, ctx: Context) -> nn.Module:
    adapter = get_adapter(model)
    if _rounds_from_data(spec) and ctx.calibration is None and not ctx.structure_only:
        what = "quant_method 'gptq'" if spec.method == "gptq" else "smooth > 0"
        raise ValueError(f"{what} needs calibration batches: set data.calibration in the study (or pass "
                         "calibration= to apply_plan)")
    if spec.smooth > 0:
        from .smooth import smooth_model

        positions = [pos for pos, original in enumerate(spec.layers) if spec.bits[original] <= 8]
        smooth_model(model, positions, spec.smooth, ctx.calibration, ctx.structure_only, ctx.log)
    use_gptq = spec.method == "gptq" and not ctx.structure_only
    for pos, original in enumerate(spec.layers):
        bits = spec.bits[original]
        layer = adapter.layers()[pos]
        rounded = None
        if use_gptq and bits <= 8:
            from .gptq import gptq_layer, layer_hessians

            rounded = gptq_layer(layer, layer_hessians(adapter, pos, ctx.calibration), bits, spec.group_size)
            ctx.log(f"gptq: layer {pos} ({len(rounded)} projections) at {bits} bits")
        if bits == 16:
            _to_bf16(layer)
        elif bits == 8:
            _to_int8(layer)
            if rounded:
                _load_int8(layer, rounded)
        elif bits < 8:
            if rounded:
                _load_simulated(layer, rounded, bits)
            _to_simulated(layer, bits, spec.group_size, ctx.structure_only or rounded is not None)
    return model
