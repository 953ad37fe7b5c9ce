"""GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers", Algorithm 1): round a Linear's weights column by column and push
each column's rounding error onto the columns not yet rounded, weighted by the inverse
Hessian of the layer's reconstruction loss ||WX - QX||^2, H = 2 X X^T / n.

Here: H is accumulated from hooked inputs over the calibration batches (padding tokens left
out), dampened by 1% of its mean diagonal, inverted through a Cholesky factor; columns are
processed in lazy blocks of 128 with optional act-order (columns by decreasing H diagonal,
with the group scales fixed up front so that groups stay contiguous input ranges). The grid
is the one `quantize.fake_quantize_weight` uses: symmetric, q in [-2^(b-1), 2^(b-1)-1], one
scale per (output row, group of `group_size` inputs); bits 8 uses one scale per output row
(the int8 kernel's per-channel layout) and q in [-128, 127].
"""

from __future__ import annotations

import torch
from torch import nn

from .calibration import StopForward, forward_until_stop, removing_hooks
from .surgery import is_conv1d, weight_out_in

__all__ = ["HessianAccumulator", "gptq_quantize", "dequantize", "layer_hessians", "gptq_layer", "token_rows"]

BLOCK = 128
DAMP = 0.01


def token_rows(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(batch, seq, features) -> (kept tokens, features): padding tokens (mask 0) dropped."""
    if mask is not None and x.dim() == 3 and mask.dim() == 2 and tuple(mask.shape) == tuple(x.shape[:2]):
        x = x[mask.bool()]
    return x.reshape(-1, x.shape[-1])


class HessianAccumulator:
    """Running H = 2/n sum_t x_t x_t^T over every token row seen (float64)."""

    def __init__(self, columns: int):
        self.h = torch.zeros(columns, columns, dtype=torch.float64)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        if not len(x):
            return
        total = self.n + len(x)
        self.h *= self.n / total
        self.h += (2.0 / total) * (x.t() @ x).double()  # float32 product, float64 running sum
        self.n = total


def _scales(w: torch.Tensor, qmax: int) -> torch.Tensor:
    return w.abs().amax(-1).clamp_min(1e-8) / qmax


def rtn_grid(bits: int) -> tuple[int, int]:
    """(qmin, qmax) of the signed symmetric grid for `bits` (int8: the full [-128, 127])."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def gptq_quantize(w: torch.Tensor, h: torch.Tensor, bits: int, group_size: int | None,
                  act_order: bool = True, damp: float = DAMP, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize w [out, in] against Hessian h [in, in].

    Returns (q, scale): integer values q [out, in] (as float) and scales [out, groups] with
    group g covering inputs [g * gs, (g + 1) * gs); group_size None (or not dividing `in`)
    means one scale per row. The dequantized weight is q * scale (repeated per group).
    """
    w = w.detach().float().clone()
    rows, cols = w.shape
    gs = group_size if group_size and cols % group_size == 0 else cols
    qmin, qmax = rtn_grid(bits)
    h = h.detach().double().clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0

    # group scales: fixed up front when act-order shuffles columns (static groups), else
    # computed from the error-updated weights when the first column of a group is reached
    static = act_order or gs == cols
    scale = torch.zeros(rows, cols // gs)
    if static:
        scale[:] = _scales(w.reshape(rows, cols // gs, gs), qmax)
    perm = torch.argsort(h.diagonal(), descending=True) if act_order else torch.arange(cols)
    w, h = w[:, perm], h[perm][:, perm]
    hinv = _inverse_cholesky(h, damp)

    q_out = torch.zeros_like(w)
    if not static:
        block = max(gs, (block // gs) * gs)  # a group never straddles two blocks
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = int(perm[i1 + i])
            g = col // gs
            if not static and col % gs == 0:
                scale[:, g] = _scales(w1[:, i:i + gs], qmax)
            s = scale[:, g]
            q = (w1[:, i] / s).round().clamp(qmin, qmax)
            q_out[:, i1 + i] = q
            e = (w1[:, i] - q * s) / hinv1[i, i]
            w1[:, i:] -= e[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    q = torch.empty_like(q_out)
    q[:, perm] = q_out
    return q, scale


def _inverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of H^-1 after dampening (more dampening if H is singular); float32
    as in the reference implementation."""
    h = h.float()
    mean_diag = float(h.diagonal().mean())
    eye = torch.eye(len(h), dtype=h.dtype)
    for factor in (1.0, 10.0, 100.0, 1000.0):
        try:
            chol = torch.linalg.cholesky(h + damp * factor * mean_diag * eye)
            inv = torch.cholesky_inverse(chol)
            return torch.linalg.cholesky(inv, upper=True)
        except RuntimeError:  # torch.linalg.LinAlgError subclasses RuntimeError
            continue
    raise RuntimeError("GPTQ: the calibration Hessian is not positive definite even with 1000% dampening")


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """q * scale with each group's scale repeated over its inputs."""
    return q * scale.repeat_interleave(q.shape[1] // scale.shape[1], dim=1)


def layer_hessians(adapter, pos: int, calibration) -> dict[str, HessianAccumulator]:
    """H of every Linear/Conv1D in transformer layer `pos`, from the model as it stands (earlier
    layers already quantized), over all calibration inputs; the forward stops after layer pos."""
    layer = adapter.layers()[pos]
    found = {name: m for name, m in layer.named_modules()
             if (isinstance(m, nn.Linear) or is_conv1d(m)) and weight_out_in(m).numel()}
    acc = {name: HessianAccumulator(weight_out_in(m).shape[1]) for name, m in found.items()}
    mask: list = [None]

    def hook(name):
        def fn(module, args):
            acc[name].add(token_rows(args[0], mask[0]))

        return fn

    def stop(module, args, out):  # ends the forward pass once the wanted layer has run
        raise StopForward

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in found.items()]
    handles.append(layer.register_forward_hook(stop))
    with removing_hooks(handles), torch.no_grad():
        for batch in calibration.batches:
            for inputs in calibration.model_inputs(batch):
                mask[0] = inputs.get("attention_mask")
                forward_until_stop(adapter.model, inputs)
    return acc


def gptq_layer(layer: nn.Module, hessians: dict[str, HessianAccumulator], bits: int, group_size: int,
               act_order: bool = True) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """GPTQ every Linear/Conv1D of one layer: {name: (q [out, in], scale [out, groups])}; bits 8
    gets one scale per output row (the int8 kernel's layout)."""
    out = {}
    for name, acc in hessians.items():
        m = layer.get_submodule(name)
        w = weight_out_in(m)
        if acc.n == 0:  # never reached by the calibration inputs: plain rounding (H = I)
            acc.h = torch.eye(w.shape[1], dtype=torch.float64)
        out[name] = gptq_quantize(w, acc.h, bits, None if bits == 8 else group_size, act_order)
    return out
