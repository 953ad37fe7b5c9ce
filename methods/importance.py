"""Importance of attention heads and FFN neurons: weight magnitude, or the empirical
Fisher information of head/neuron masks (Kwon et al. 2022, "A Fast Post-Training Pruning
Framework for Transformers", §4.1)."""

from __future__ import annotations

import weakref

import torch

from .adapters import Adapter
from .calibration import Calibration
from .surgery import module_at, weight_out_in

__all__ = ["magnitude_scores", "fisher_scores", "importance_scores"]


def _gain(adapter: Adapter, layer, norm: str | None) -> torch.Tensor | float:
    """The per-channel gain of the pre-norm that feeds a block's input projections (1 without one): the
    projections read the normalised stream times this gain, so their weights count as W * gain. An
    RMSNorm gain can be far from 1 on a few channels (SmolLM2's layer 0), and scoring the raw weights
    then drops exactly the neurons that read those channels."""
    weight = getattr(module_at(layer, norm), "weight", None) if norm else None
    return weight.detach().float() if weight is not None else 1.0


def magnitude_scores(adapter: Adapter) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer: head scores (squared norm of each head's q/k/v rows and o columns) and
    neuron scores (norm of the neuron's input rows times its output column); the input rows are
    scaled by the gain of the pre-norm that feeds them (`_gain`)."""
    d = adapter.head_dim
    g = adapter.shape().heads_per_group
    heads, neurons = [], []
    with torch.no_grad():
        for layer in adapter.layers():
            if adapter.has_attention(layer):
                gain = _gain(adapter, layer, adapter.attn_norm)
                wq, wk, wv, wo = (w.float() for w in adapter.attention_weights(layer))
                wq, wk, wv = wq * gain, wk * gain, wv * gain
                h = wq.shape[0] // d
                q = wq.reshape(h, d, -1).pow(2).sum((1, 2))
                kv = (wk.reshape(-1, d, wk.shape[1]).pow(2).sum((1, 2)) + wv.reshape(-1, d, wv.shape[1]).pow(2).sum((1, 2)))
                o = wo.reshape(wo.shape[0], h, d).pow(2).sum((0, 2))
                heads.append(q + o + kv.repeat_interleave(g))
            else:
                heads.append(torch.zeros(0))
            ins, out = adapter.ffn_modules(layer)
            gain = _gain(adapter, layer, adapter.ffn_norm)
            w_in = sum((weight_out_in(m).float() * gain).pow(2).sum(1) for m in ins).sqrt()
            w_out = weight_out_in(out).float().pow(2).sum(0).sqrt()
            neurons.append(w_in * w_out)
    return heads, neurons


def fisher_scores(
    adapter: Adapter, calibration: Calibration, log=lambda m: None
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Sum over calibration batches of the squared gradient of the task loss with respect to
    a mask of ones on every head (before the attention output projection) and neuron
    (before the second FFN projection)."""
    model = adapter.model
    d = adapter.head_dim
    head_masks, neuron_masks, handles = [], [], []

    def make_hook(mask, width):
        def hook(module, args):
            x = args[0]
            m = mask.repeat_interleave(width) if width > 1 else mask
            return (x * m.to(x.dtype),) + tuple(args[1:])

        return hook

    for layer in adapter.layers():
        n_heads = adapter.num_heads(layer)
        hm = torch.ones(n_heads, requires_grad=True)
        head_masks.append(hm)
        if n_heads:
            handles.append(adapter.linear(layer, adapter.o).register_forward_pre_hook(make_hook(hm, d)))
        _, out = adapter.ffn_modules(layer)
        nm = torch.ones(adapter.num_neurons(layer), requires_grad=True)
        neuron_masks.append(nm)
        handles.append(out.register_forward_pre_hook(make_hook(nm, 1)))

    head_f = [torch.zeros_like(m) for m in head_masks]
    neuron_f = [torch.zeros_like(m) for m in neuron_masks]
    was_training = model.training
    model.eval()
    params = [p for p in model.parameters()]
    req = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        for i, batch in enumerate(calibration.batches):
            loss = calibration.loss_fn(model, batch)
            grads = torch.autograd.grad(loss, head_masks + neuron_masks, allow_unused=True)
            for acc, g_ in zip(head_f + neuron_f, grads):
                if g_ is not None:
                    acc += g_.detach().pow(2)
            log(f"fisher batch {i + 1}/{len(calibration.batches)} loss {loss.item():.4f}")
    finally:
        for h in handles:
            h.remove()
        for p, r in zip(params, req):
            p.requires_grad_(r)
        model.train(was_training)
    return head_f, neuron_f


def importance_scores(adapter: Adapter, kind: str, calibration: Calibration | None, log=lambda m: None):
    if kind == "magnitude":
        return magnitude_scores(adapter)
    if kind == "fisher":
        if calibration is None:
            raise ValueError("importance 'fisher' needs calibration batches; pass calibration= or use 'magnitude'")
        cache = calibration.__dict__.setdefault("_fisher_cache", weakref.WeakKeyDictionary())
        if adapter.model not in cache:
            cache[adapter.model] = fisher_scores(adapter, calibration, log)
        return cache[adapter.model]
    raise ValueError(f"unknown importance {kind!r}; allowed: magnitude, fisher")
