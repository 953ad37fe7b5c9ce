"""Mask tuning (Kwon et al. 2022, "A Fast Post-Training Pruning Framework for Transformers",
§4.3): after pruning, rescale each kept attention head and FFN neuron by a scalar found by
least squares, then fold the scalars into the output projections (no masks or hooks remain).

Formulation (the paper's layer-wise reconstruction, per sub-layer, before its LayerNorm):
for student layer p (original layer i = plan.layers[p]) with residual input r_S and kept
units u with contributions c_u (tokens x hidden; for a head, o.weight[:, head cols] @ x_head;
for a neuron, ffn_out.weight[:, j] * x_j), choose m to minimise

    || r_S + bias_S + sum_u m_u c_u  -  (r_T + f_T(x_T)) ||^2  +  lam ||m - 1||^2

where r_T + f_T(x_T) is the TEACHER's residual sum for the same sub-layer of layer i, computed
on the teacher's own hidden states (the uncompressed model run on the calibration inputs),
and r_S, c_u come from the student's own hidden states (earlier layers already tuned). So the
scalars also correct drift in the residual stream (the paper's x + layer(x; 1) vs
x' + layer(x'; m)). Residuals: the attention sub-layer's is the layer input; the FFN's is the
input of the first FFN projection in post-norm models (BERT, DistilBERT) and the layer output
minus the FFN output in pre-norm ones. Padding tokens (attention_mask 0) are left out.

The normal equations are accumulated in float64 (the Gram matrix is n_kept x n_kept; for FFN
neurons it is (X^T X) * (W^T W)), solved with a ridge lam = ridge * mean(diag G) toward 1, and
the scalars clamped to [0, 5]; a non-finite solution falls back to 1. Attention and FFN of a
layer are tuned in that order, layers in order; a sub-layer that kept all or none of its units
is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .adapters import Adapter, get_adapter
from .calibration import Context, StopForward, forward_until_stop, removing_hooks
from .surgery import weight_out_in

__all__ = ["MaskTuneSpec", "mask_tune", "SCALE_RANGE"]

SCALE_RANGE = (0.0, 5.0)


@dataclass(frozen=True)
class MaskTuneSpec:
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    ffn: tuple[int, ...]
    ridge: float = 1e-3

    @classmethod
    def from_plan(cls, plan) -> MaskTuneSpec | None:
        if plan.recovery != "mask_tuning":
            return None
        return cls(plan.layers, plan.heads, plan.ffn)


def _tokens(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(batch, seq, features) -> (kept tokens, features), in float64."""
    if mask is not None and mask.dim() == 2 and tuple(mask.shape) == tuple(x.shape[:2]):
        x = x[mask.bool()]
    return x.reshape(-1, x.shape[-1]).double()


def _capture(adapter: Adapter, wanted: dict[int, set[str]], inputs: dict, stop: tuple[int, str]) -> dict:
    """One forward pass; returns {(layer position, key): tensor} for the keys wanted per layer
    (in/out: layer input/output; o_in/o_out, f_in (first FFN projection), fo_in/fo_out)."""
    store: dict = {}
    handles = []

    def pre(key):
        def hook(module, args, kwargs):
            store[key] = (args[0] if args else kwargs["hidden_states"]).detach()
            if key == stop:
                raise StopForward

        return hook

    def post(key):
        def hook(module, args, out):
            store[key] = (out[0] if isinstance(out, tuple) else out).detach()
            if key == stop:
                raise StopForward

        return hook

    layers = adapter.layers()
    with removing_hooks(handles):
        for pos, keys in wanted.items():
            layer = layers[pos]
            ins, fo = adapter.ffn_modules(layer)
            mods = {"in": layer, "out": layer, "f_in": ins[0], "fo_in": fo, "fo_out": fo}
            if "o_in" in keys or "o_out" in keys:
                mods["o_in"] = mods["o_out"] = adapter.linear(layer, adapter.o)
            for key in keys:
                m = mods[key]
                if key.endswith("in"):
                    handles.append(m.register_forward_pre_hook(pre((pos, key)), with_kwargs=True))
                else:
                    handles.append(m.register_forward_hook(post((pos, key))))
        forward_until_stop(adapter.model, inputs)
    return store


def _solve(gram: torch.Tensor, rhs: torch.Tensor, ridge: float) -> torch.Tensor:
    n = len(rhs)
    lam = ridge * float(gram.diagonal().mean().clamp_min(1e-12))
    try:
        m = torch.linalg.solve(gram + lam * torch.eye(n, dtype=gram.dtype), rhs + lam)
    except RuntimeError:  # singular even with the ridge
        return torch.ones(n, dtype=gram.dtype)
    if not torch.isfinite(m).all():
        return torch.ones(n, dtype=gram.dtype)
    return m.clamp(*SCALE_RANGE)


def _tune(student: Adapter, pos: int, kind: str, targets: list, inputs: list, post_norm: bool, ridge: float,
          log) -> torch.Tensor:
    """Least-squares scalars for the heads ("attn") or neurons ("ffn") of student layer pos."""
    layer = student.layers()[pos]
    if kind == "attn":
        proj = student.linear(layer, student.o)
        keys, stop = {"in", "o_in"}, (pos, "o_in")
    else:
        proj = student.ffn_modules(layer)[1]
        keys = {"fo_in", "f_in"} if post_norm else {"fo_in", "fo_out", "out"}
        stop = (pos, "out") if not post_norm else (pos, "fo_in")
    w = weight_out_in(proj).detach().double().contiguous()  # (hidden, in)
    bias = proj.bias.detach().double() if getattr(proj, "bias", None) is not None else 0.0
    d = student.head_dim if kind == "attn" else 1
    n = w.shape[1] // d
    gram = torch.zeros(n, n, dtype=torch.float64)
    rhs = torch.zeros(n, dtype=torch.float64)
    yy = 0.0
    wtw = w.t() @ w if kind == "ffn" else None
    for inp, target in zip(inputs, targets):
        got = _capture(student, {pos: keys}, inp, stop)
        mask = inp.get("attention_mask")
        x = _tokens(got[(pos, "fo_in" if kind == "ffn" else "o_in")], mask)
        if kind == "attn":
            resid = _tokens(got[(pos, "in")], mask)
        elif post_norm:
            resid = _tokens(got[(pos, "f_in")], mask)
        else:
            resid = _tokens(got[(pos, "out")], mask) - _tokens(got[(pos, "fo_out")], mask)
        y = target - bias - resid
        if kind == "attn":
            c = torch.einsum("tnd,hnd->tnh", x.reshape(len(x), n, d), w.reshape(len(w), n, d))
            gram += torch.einsum("tnh,tmh->nm", c, c)
            rhs += torch.einsum("tnh,th->n", c, y)
        else:
            gram += (x.t() @ x) * wtw
            rhs += ((y @ w) * x).sum(0)
        yy += float((y * y).sum())
    m = _solve(gram, rhs, ridge)
    ones = torch.ones_like(m)
    err = [(yy - 2 * v @ rhs + v @ gram @ v) / max(yy, 1e-30) for v in (ones, m)]
    log(f"mask tuning layer {pos} {kind}: {n} units, scales {float(m.min()):.3f}..{float(m.max()):.3f}, "
        f"relative error {float(err[0]):.4f} -> {float(err[1]):.4f}")
    with torch.no_grad():
        wt = weight_out_in(proj)
        wt.mul_(m.repeat_interleave(d).to(wt.dtype))
    return m


def mask_tune(model: nn.Module, spec: MaskTuneSpec, ctx: Context) -> nn.Module:
    """Rescale kept heads/neurons of the pruned `model` toward the source model (in place)."""
    if ctx.structure_only:
        return model
    if ctx.calibration is None:
        raise ValueError("recovery 'mask_tuning' needs calibration batches; pass calibration= or use recovery 'none'")
    if ctx.source is None:
        raise ValueError("recovery 'mask_tuning' needs the uncompressed source model in the context")
    student, teacher = get_adapter(model), get_adapter(ctx.source)
    full_heads, full_ffn = teacher.shape().num_heads, teacher.shape().intermediate_size
    jobs = []  # (student position, original index, kind)
    for pos, orig in enumerate(spec.layers):
        if 0 < spec.heads[orig] < full_heads:
            jobs.append((pos, orig, "attn"))
        if 0 < spec.ffn[orig] < full_ffn:
            jobs.append((pos, orig, "ffn"))
    if not jobs:
        return model
    post_norm = student.post_norm
    inputs = [inp for batch in ctx.calibration.batches for inp in ctx.calibration.model_inputs(batch)]
    wanted: dict[int, set[str]] = {}
    for _, orig, kind in jobs:
        keys = {"in", "o_out"} if kind == "attn" else ({"f_in", "fo_out"} if post_norm else {"out"})
        wanted.setdefault(orig, set()).update(keys)
    last = max(wanted)
    wanted[last].add("out")  # where the teacher's pass can stop
    targets: dict[tuple[int, str], list] = {(orig, kind): [] for _, orig, kind in jobs}
    was_training = (model.training, ctx.source.training)
    model.eval()
    ctx.source.eval()
    try:
        with torch.no_grad():
            for inp in inputs:  # teacher: residual sums of each tuned sub-layer, on its own hidden states
                got = _capture(teacher, wanted, inp, (last, "out"))
                mask = inp.get("attention_mask")
                for (orig, kind), out in targets.items():
                    if kind == "attn":
                        out.append(_tokens(got[(orig, "in")], mask) + _tokens(got[(orig, "o_out")], mask))
                    elif post_norm:
                        out.append(_tokens(got[(orig, "f_in")], mask) + _tokens(got[(orig, "fo_out")], mask))
                    else:
                        out.append(_tokens(got[(orig, "out")], mask))
            for pos, orig, kind in jobs:
                _tune(student, pos, kind, targets.pop((orig, kind)), inputs, post_norm, spec.ridge, ctx.log)
    finally:
        model.train(was_training[0])
        ctx.source.train(was_training[1])
    return model
