"""Quantization: simulated low-bit rounding, real int8 and bf16 layers, and sizes."""

from __future__ import annotations

import pytest
import torch
from slimformer.methods import Plan, apply_plan, get_adapter, model_size
from slimformer.methods.quantize import BITS_ATTR, fake_quantize_weight


def _dynamic_int8(module) -> bool:
    from torch.ao.nn.quantized.dynamic import Linear

    return isinstance(module, Linear)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_fake_quantize_uses_at_most_2_pow_bits_values_per_group(bits):
    torch.manual_seed(0)
    w = torch.randn(6, 64)
    q = fake_quantize_weight(w, bits, group_size=16)
    assert q.shape == w.shape and q.dtype == w.dtype
    for row in q.reshape(6, 4, 16).reshape(-1, 16):
        assert len(torch.unique(row)) <= 2**bits
    assert torch.equal(fake_quantize_weight(q, bits, 16), q)  # already on the grid


def test_fake_quantize_error_shrinks_with_bits():
    torch.manual_seed(0)
    w = torch.randn(32, 128)
    errors = [(fake_quantize_weight(w, b, 32) - w).abs().mean().item() for b in (2, 3, 4, 8)]
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 0.01 < errors[0]


def test_fake_quantize_odd_width_uses_one_group():
    w = torch.randn(3, 10)
    q = fake_quantize_weight(w, 2, group_size=64)  # 10 is not a multiple of 64
    assert all(len(torch.unique(row)) <= 4 for row in q)


def test_bits8_uses_the_real_int8_kernel(tiny_models):
    tiny = tiny_models["gpt2"]  # Conv1D projections become int8 Linear too
    base = tiny.build()
    small = apply_plan(base, Plan(bits=[8, 32, 32]))
    layers = get_adapter(small).layers()
    int8 = [m for m in layers[0].modules() if _dynamic_int8(m)]
    assert len(int8) == 4  # c_attn, attn c_proj, c_fc, mlp c_proj
    assert all(m.weight().dtype == torch.qint8 for m in int8)
    assert not any(_dynamic_int8(m) for m in layers[1].modules())
    with torch.no_grad():
        out, ref = small(**tiny.inputs()).logits, base(**tiny.inputs()).logits
    assert out.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.99


def test_bits16_layers_hold_bfloat16_and_the_model_returns_float32(tiny_models):
    tiny = tiny_models["llama"]
    small = apply_plan(tiny.build(), Plan(bits=[16, 32, 16]))
    layers = get_adapter(small).layers()
    assert all(p.dtype == torch.bfloat16 for p in layers[0].parameters())
    assert all(p.dtype == torch.float32 for p in layers[1].parameters())
    assert all(p.dtype == torch.bfloat16 for p in layers[2].parameters())
    with torch.no_grad():
        out = small(**tiny.inputs()).logits
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_simulated_bits_round_the_weights(tiny_models):
    tiny = tiny_models["vit"]
    small = apply_plan(tiny.build(), Plan(bits=[4, 32, 2], group_size=16))
    layers = get_adapter(small).layers()
    for pos, bits in ((0, 4), (2, 2)):
        fc1 = layers[pos].mlp.fc1
        assert getattr(fc1, BITS_ATTR) == bits
        assert fc1.weight.dtype == torch.float32
        for group in fc1.weight.detach().reshape(-1, 16):
            assert len(torch.unique(group)) <= 2**bits
    assert not hasattr(layers[1].mlp.fc1, BITS_ATTR)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_size_shrinks_with_bits(tiny_models, arch):
    base = tiny_models[arch].build()
    sizes = {b: model_size(apply_plan(base, Plan(bits=b, group_size=16))) for b in (2, 3, 4, 8, 16)}
    sizes[32] = model_size(base)
    mb = [sizes[b]["size_mb"] for b in (2, 3, 4, 8, 16, 32)]
    assert mb == sorted(mb) and len(set(mb)) == len(mb), mb
    assert all(s["params"] == sizes[32]["params"] for s in sizes.values())
    assert {b: s["simulated"] for b, s in sizes.items()} == {
        2: True, 3: True, 4: True, 8: False, 16: False, 32: False}


def test_size_counts_every_layer_parameter_at_its_width(tiny_models):
    base = tiny_models["bert"].build()
    full, half = model_size(base), model_size(apply_plan(base, Plan(bits=16)))
    layer_params = sum(p.numel() for p in get_adapter(base).layers().parameters())
    assert full["size_bytes"] == 4 * full["params"]
    assert full["size_bytes"] - half["size_bytes"] == 2 * layer_params  # 4 -> 2 bytes each
