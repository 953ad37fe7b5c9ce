"""Low-rank factorisation (truncated SVD) of the FFN projections, per layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .adapters import get_adapter
from .calibration import Context
from .surgery import weight_out_in

__all__ = ["LowRankSpec", "LowRankLinear", "low_rank"]


@dataclass(frozen=True)
class LowRankSpec:
    rank: tuple[int, ...]  # per ORIGINAL layer; 0 = dense
    layers: tuple[int, ...]  # original indices of the layers that remain

    @classmethod
    def from_plan(cls, plan) -> LowRankSpec | None:
        return cls(plan.rank, plan.layers) if any(plan.rank[i] for i in plan.layers) else None


class LowRankLinear(nn.Module):
    """y = B(A x) + b with A: [rank, in], B: [out, rank]; replaces one dense projection."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    @classmethod
    def from_dense(cls, module: nn.Module, rank: int, structure_only: bool = False) -> LowRankLinear:
        w = weight_out_in(module).detach().float()
        out = cls(w.shape[1], w.shape[0], rank, module.bias is not None)
        if not structure_only:
            u, s, vh = torch.linalg.svd(w, full_matrices=False)
            root = s[:rank].sqrt()
            with torch.no_grad():
                out.up.weight.copy_(u[:, :rank] * root)
                out.down.weight.copy_(root[:, None] * vh[:rank])
                if module.bias is not None:
                    out.up.bias.copy_(module.bias)
        return out


def low_rank(model: nn.Module, spec: LowRankSpec, ctx: Context) -> nn.Module:
    adapter = get_adapter(model)
    for pos, original in enumerate(spec.layers):
        r = spec.rank[original]
        layer = adapter.layers()[pos]
        if not r or adapter.num_neurons(layer) == 0:
            continue
        for path in adapter.ffn_in + (adapter.ffn_out,):
            dense = adapter.linear(layer, path)
            w = weight_out_in(dense)
            rank = min(r, *w.shape)
            parent, _, name = path.rpartition(".")
            setattr(adapter.linear(layer, parent) if parent else layer, name,
                    LowRankLinear.from_dense(dense, rank, ctx.structure_only))
    return model
