"""Module surgery shared by the adapters and the methods: modules at dotted paths, GPT-2's Conv1D
(a Linear with its weight stored transposed), slicing a Linear's input or output channels in
place, `NoAttention`, which stands in for an attention block that kept no heads, and switching a
model's attention implementation (`set_attention`).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["module_at", "set_module_at", "is_conv1d", "conv1d_as_linear", "weight_out_in", "slice_out", "slice_in",
           "NoAttention", "attention_of", "set_attention"]


def module_at(root: nn.Module, path: str) -> nn.Module:
    """The submodule at a dotted path (`attention.self.query`)."""
    for part in path.split("."):
        root = getattr(root, part)
    return root


def set_module_at(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(module_at(root, parent) if parent else root, name, module)


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's Conv1D (a Linear with its weight stored transposed)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def conv1d_as_linear(module: nn.Module) -> nn.Linear:
    """An nn.Linear computing the same as GPT-2's Conv1D (weight stored transposed)."""
    lin = nn.Linear(module.weight.shape[0], module.nf)
    with torch.no_grad():
        lin.weight.copy_(module.weight.t())
        lin.bias.copy_(module.bias)
    return lin


def weight_out_in(module: nn.Module) -> torch.Tensor:
    """The weight as [out_features, in_features], for nn.Linear and GPT-2's Conv1D."""
    return module.weight.t() if is_conv1d(module) else module.weight


def slice_out(module: nn.Module, keep: torch.Tensor) -> None:
    """Keep only output channels `keep` (in place, new smaller parameters)."""
    keep = keep.to(module.weight.device)
    with torch.no_grad():
        if is_conv1d(module):
            module.weight = nn.Parameter(module.weight[:, keep].clone())
            module.bias = nn.Parameter(module.bias[keep].clone())
            module.nf = len(keep)
            return
        module.weight = nn.Parameter(module.weight[keep].clone())
        if module.bias is not None:
            module.bias = nn.Parameter(module.bias[keep].clone())
        module.out_features = len(keep)


def slice_in(module: nn.Module, keep: torch.Tensor) -> None:
    """Keep only input channels `keep` (in place)."""
    keep = keep.to(module.weight.device)
    with torch.no_grad():
        if is_conv1d(module):
            module.weight = nn.Parameter(module.weight[keep].clone())
            return
        module.weight = nn.Parameter(module.weight[:, keep].clone())
        module.in_features = len(keep)


class NoAttention(nn.Module):
    """Stands in for an attention block whose heads were all pruned.

    Returns what the removed block would have returned for zero heads: the output
    projection's bias (or an empty tensor when the projection lives outside the block).
    """

    def __init__(self, out_features: int, bias: torch.Tensor | None):
        super().__init__()
        self.out_features = out_features
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    def forward(self, hidden_states, *args, **kwargs):
        out = hidden_states.new_zeros(*hidden_states.shape[:-1], self.out_features)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out, None


def attention_of(model: nn.Module) -> str | None:
    """The transformers attention implementation `model` runs with (config._attn_implementation)."""
    return getattr(getattr(model, "config", None), "_attn_implementation", None)


def set_attention(model: nn.Module, name: str) -> bool:
    """Switch a transformers model to attention implementation `name`; False when it cannot use it."""
    if attention_of(model) == name:
        return True
    if not hasattr(model, "set_attn_implementation"):
        return False
    try:
        model.set_attn_implementation(name)
    except (ValueError, ImportError, NotImplementedError):
        return False
    return attention_of(model) == name
