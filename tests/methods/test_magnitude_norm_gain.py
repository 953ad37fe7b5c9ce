"""Magnitude importance reads the weights as the layer applies them: a pre-norm's per-channel gain
scales the input projections' columns (methods/importance.py). SmolLM2-135M's layer 0 has an RMSNorm
gain far from 1 on a few channels; scoring the raw weights dropped exactly the FFN neurons that read
them, and 25% of the FFN pruned by magnitude gave a test perplexity of ~3 million (docs/decoders.md)."""

from __future__ import annotations

import torch
from slimformer.methods import Plan, apply_plan, get_adapter
from slimformer.methods.importance import magnitude_scores


def _planted(tiny_models):
    """A tiny Llama whose layer-0 FFN norm amplifies channel C 1000x over the others, and whose neuron J
    reads only that channel, through small raw weights; no other neuron reads it."""
    model = tiny_models["llama"].build()
    c, j = 5, 17
    layer = model.model.layers[0]
    with torch.no_grad():
        gain = torch.full_like(layer.post_attention_layernorm.weight, 0.01)
        gain[c] = 10.0
        layer.post_attention_layernorm.weight.copy_(gain)
        for proj in (layer.mlp.gate_proj, layer.mlp.up_proj):
            proj.weight[:, c] = 0.0
            proj.weight[j] = 0.0
            proj.weight[j, c] = 0.05
        layer.mlp.down_proj.weight[:, j] = 0.5
    return model, c, j


def test_magnitude_scores_fold_the_pre_norm_gain_into_the_input_projections(tiny_models):
    model, _, j = _planted(tiny_models)
    layer = model.model.layers[0]
    raw = (layer.mlp.gate_proj.weight.pow(2).sum(1) + layer.mlp.up_proj.weight.pow(2).sum(1)).sqrt()
    assert raw[j] == raw.min()  # by its raw weights neuron J is the least important ...
    _, neurons = magnitude_scores(get_adapter(model))
    assert int(neurons[0].argmax()) == j  # ... as the layer applies them, the most


def test_magnitude_pruning_keeps_the_neuron_that_reads_the_amplified_channel(tiny_models):
    model, c, j = _planted(tiny_models)
    ffn = tiny_models["llama"].ffn
    small = apply_plan(model, Plan(ffn=[ffn // 4, ffn, ffn]))
    kept_rows = small.model.layers[0].mlp.gate_proj.weight
    assert any(torch.equal(row, model.model.layers[0].mlp.gate_proj.weight[j]) for row in kept_rows)
    ids = torch.randint(1, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full, pruned = model(input_ids=ids).logits, small(input_ids=ids).logits
        hook = model.model.layers[0].mlp.down_proj.register_forward_pre_hook(
            lambda mod, args: (args[0] * (torch.arange(args[0].shape[-1]) != j),))
        without_j = model(input_ids=ids).logits
        hook.remove()
    # the neuron carries most of layer 0's FFN output: losing it moves the logits far more than pruning
    # the other three quarters of that FFN does
    assert (without_j - full).abs().max() > 3 * (pruned - full).abs().max()
