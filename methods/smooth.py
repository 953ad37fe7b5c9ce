"""SmoothQuant-style scaling of activation outliers (Xiao et al. 2023, "SmoothQuant: Accurate
and Efficient Post-Training Quantization for Large Language Models", §4): for the Linears that
read a normalisation layer's output, divide input channel j by

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

and multiply the weight column j of every such Linear by s_j. The product is unchanged in
exact arithmetic; the activations lose their outlier channels (per-tensor int8 activation
quantization gets a finer step) while the weights take on part of the range.

Where the 1/s goes depends on the architecture (its adapter's `post_norm` and `norm_groups`):
- pre-norm (GPT-2, ViT, Llama-style): the norm's output feeds only the Q/K/V (or fused QKV)
  and FFN input projections, so 1/s is folded into the norm's weight (and bias): no extra work
  at run time, as in the paper.
- post-norm (BERT family, DistilBERT): the LayerNorm's output is ALSO the residual branch of
  the next sub-layer, so folding 1/s into it would change the model. Instead each smoothed
  Linear gets an explicit per-channel input scale (`InputScale`, one elementwise multiply;
  its cost is in every measured latency).
Only layers at 8/4/3/2 bits are smoothed (bf16 keeps a relative precision per value). A group whose
consumers are gone (attention or FFN pruned to nothing) is skipped and logged. max|X_j| is
taken over the calibration tokens (padding left out) of the model before quantization.
"""

from __future__ import annotations

import torch
from torch import nn

from .adapters import Adapter, get_adapter
from .calibration import removing_hooks
from .gptq import token_rows
from .surgery import is_conv1d, module_at, set_module_at

__all__ = ["InputScale", "smooth_groups", "smooth_model", "smoothing_factors"]


class InputScale(nn.Module):
    """y = inner(x * inv_scale): a per-input-channel scale in front of a Linear."""

    def __init__(self, inner: nn.Module, channels: int):
        super().__init__()
        self.inner = inner
        self.register_buffer("inv_scale", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x * self.inv_scale.to(x.dtype))


def _first_linear(module: nn.Module) -> nn.Module:
    """The module whose weight multiplies the input: a LowRankLinear's `down` factor."""
    return module.down if hasattr(module, "down") and hasattr(module, "up") else module


def _in_columns(module: nn.Module) -> torch.Tensor:
    """|W| as [in, out] (one row per input channel)."""
    m = _first_linear(module)
    return m.weight.detach().abs() if is_conv1d(m) else m.weight.detach().abs().t()


def _scale_inputs(module: nn.Module, s: torch.Tensor) -> None:
    m = _first_linear(module)
    with torch.no_grad():
        if is_conv1d(m):
            m.weight.mul_(s[:, None].to(m.weight.dtype))
        else:
            m.weight.mul_(s[None, :].to(m.weight.dtype))


def _resolve(layer: nn.Module, paths: tuple[str, ...]) -> list[nn.Module] | None:
    try:
        mods = [module_at(layer, p) for p in paths]
    except AttributeError:  # e.g. attention replaced by NoAttention
        return None
    if any(isinstance(m, InputScale) for m in mods):
        return None
    if any(_first_linear(m).weight.numel() == 0 for m in mods):
        return None
    return mods


def smooth_groups(adapter: Adapter, positions: list[int], log=lambda m: None) -> list[tuple]:
    """[(pos, norm path or None, consumer paths)] that can be smoothed in these layer positions."""
    out = []
    layers = adapter.layers()
    for pos in positions:
        for norm, paths in adapter.norm_groups():
            if _resolve(layers[pos], paths) is None:
                log(f"smooth: layer {pos} {', '.join(paths)}: pruned away or empty; skipped")
                continue
            out.append((pos, norm, paths))
    return out


def _activation_max(adapter: Adapter, groups: list[tuple], calibration) -> list[torch.Tensor]:
    """Per group, max |x_j| over the calibration tokens entering its first consumer."""
    layers = adapter.layers()
    amax: list = [None] * len(groups)
    mask: list = [None]

    def hook(i):
        def fn(module, args):
            x = token_rows(args[0].detach().float(), mask[0])
            if len(x):
                cur = x.abs().amax(0)
                amax[i] = cur if amax[i] is None else torch.maximum(amax[i], cur)

        return fn

    handles = [module_at(layers[pos], paths[0]).register_forward_pre_hook(hook(i))
               for i, (pos, _, paths) in enumerate(groups)]
    with removing_hooks(handles), torch.no_grad():
        for batch in calibration.batches:
            for inputs in calibration.model_inputs(batch):
                mask[0] = inputs.get("attention_mask")
                adapter.model(**inputs)
    return amax


def smoothing_factors(x_max: torch.Tensor, w_max: torch.Tensor, alpha: float) -> torch.Tensor:
    """s_j = max|X_j|^alpha / max|W_j|^(1-alpha); channels never active (or all-zero weights) keep 1."""
    x_max, w_max = x_max.float(), w_max.float()
    s = x_max.clamp_min(1e-5).pow(alpha) / w_max.clamp_min(1e-5).pow(1 - alpha)
    s = torch.where((x_max > 0) & (w_max > 0), s, torch.ones_like(s))
    return s.clamp(1e-4, 1e4)


def smooth_model(model: nn.Module, positions: list[int], alpha: float, calibration=None,
                 structure_only: bool = False, log=lambda m: None) -> int:
    """Smooth the groups of the layers at `positions` (in place); returns how many groups.
    With structure_only, only the InputScale modules are put in place (scales 1)."""
    adapter = get_adapter(model)
    groups = smooth_groups(adapter, positions, log)
    if not groups:
        return 0
    if adapter.post_norm:
        log(f"smooth: {type(adapter).__name__} is post-norm (the LayerNorm output is also the residual): "
            "explicit per-channel input scales instead of folding into the LayerNorm")
    amax = None if structure_only else _activation_max(adapter, groups, calibration)
    layers = adapter.layers()
    for i, (pos, norm, paths) in enumerate(groups):
        layer = layers[pos]
        mods = [module_at(layer, p) for p in paths]
        width = _in_columns(mods[0]).shape[0]
        if structure_only:
            s = torch.ones(width)
        else:
            w_max = torch.stack([_in_columns(m).amax(1) for m in mods]).amax(0)
            x_max = amax[i] if amax[i] is not None else torch.zeros(width)
            s = smoothing_factors(x_max, w_max, alpha)
            for m in mods:
                _scale_inputs(m, s)
        if norm is not None:
            ln = module_at(layer, norm)
            with torch.no_grad():
                ln.weight.div_(s.to(ln.weight.dtype))
                if getattr(ln, "bias", None) is not None:
                    ln.bias.div_(s.to(ln.bias.dtype))
        else:
            for p, m in zip(paths, mods):
                wrapped = InputScale(m, width)
                wrapped.inv_scale.copy_(1.0 / s)
                set_module_at(layer, p, wrapped)
    log(f"smooth: alpha {alpha}, {len(groups)} groups of Linears in {len(set(g[0] for g in groups))} layers")
    return len(groups)
