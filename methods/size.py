"""Parameter count and storage size of a (compressed) model, counted at the real or
simulated width of every weight."""

from __future__ import annotations

from torch import nn

from .quantize import BITS_ATTR

__all__ = ["model_size", "is_dynamic_int8"]


def is_dynamic_int8(module: nn.Module) -> bool:
    """A torch.ao dynamic int8 Linear (what bits 8 builds)."""
    return type(module).__name__ == "Linear" and type(module).__module__.startswith("torch.ao.nn.quantized.dynamic")


def model_size(model: nn.Module, group_size: int = 64) -> dict:
    """{'params', 'size_bytes', 'size_mb', 'simulated'}: int8 weights at 1 byte plus a
    float32 scale per output channel; simulated b-bit weights at b/8 bytes plus a float16
    scale per group; everything else at its dtype's width. Tied tensors count once."""
    seen: set[int] = set()
    params = 0
    size = 0.0
    simulated = False
    for module in model.modules():
        if is_dynamic_int8(module):
            w, b = module.weight(), module.bias()
            out_f, in_f = w.shape
            params += w.numel() + (b.numel() if b is not None else 0)
            size += w.numel() + out_f * 4 + (b.numel() * 4 if b is not None else 0)
            continue
        bits = getattr(module, BITS_ATTR, None)
        for name, p in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            if id(p) in seen or p is None:
                continue
            seen.add(id(p))
            if name.endswith("position_ids") or name.endswith("token_type_ids"):
                continue
            is_param = isinstance(p, nn.Parameter)
            params += p.numel() if is_param else 0
            if bits is not None and name == "weight":
                simulated = True
                size += p.numel() * bits / 8 + (p.numel() / group_size) * 2
            elif is_param:
                size += p.numel() * p.element_size()
    return {"params": int(params), "size_bytes": int(size), "size_mb": size / 2**20, "simulated": simulated}
