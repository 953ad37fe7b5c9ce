"""Structured pruning that physically removes heads, FFN neurons and whole layers."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .adapters import get_adapter
from .calibration import Context
from .importance import importance_scores

__all__ = ["PruneSpec", "prune"]


@dataclass(frozen=True)
class PruneSpec:
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    ffn: tuple[int, ...]
    importance: str = "magnitude"

    @classmethod
    def from_plan(cls, plan) -> PruneSpec | None:
        return cls(plan.layers, plan.heads, plan.ffn, plan.importance)


def _top(scores: torch.Tensor, k: int, group: int = 1) -> torch.Tensor:
    """Indices of the k best units; with group > 1, whole groups ranked by their summed score."""
    if group > 1:
        groups = scores.reshape(-1, group).sum(1)
        best = torch.topk(groups, k // group).indices.sort().values
        return (best[:, None] * group + torch.arange(group)[None, :]).reshape(-1)
    return torch.topk(scores, k).indices.sort().values


def prune(model: nn.Module, spec: PruneSpec, ctx: Context) -> nn.Module:
    adapter = get_adapter(model)
    layers = adapter.layers()
    g = adapter.shape().heads_per_group
    kept = set(spec.layers)
    needs = [
        i
        for i, layer in enumerate(layers)
        if i in kept and (spec.heads[i] < adapter.num_heads(layer) or spec.ffn[i] < adapter.num_neurons(layer))
    ]
    if needs and not ctx.structure_only:
        ctx.log(f"importance: {spec.importance}")
        # scores of the untouched source model (identical weights; cached per calibration set)
        scorer = get_adapter(ctx.source) if ctx.source is not None else adapter
        head_scores, neuron_scores = importance_scores(scorer, spec.importance, ctx.calibration, ctx.log)
    for i in needs:
        layer = layers[i]
        n_heads, n_neurons = adapter.num_heads(layer), adapter.num_neurons(layer)
        if spec.heads[i] < n_heads:
            keep = torch.arange(spec.heads[i]) if ctx.structure_only else _top(head_scores[i], spec.heads[i], g)
            adapter.prune_heads(layer, keep)
        if spec.ffn[i] < n_neurons:
            keep = torch.arange(spec.ffn[i]) if ctx.structure_only else _top(neuron_scores[i], spec.ffn[i])
            adapter.prune_ffn(layer, keep)
    if len(spec.layers) < len(layers):
        adapter.keep_layers(list(spec.layers))
    return model
