"""Sensitivity (Fisher / Hutchinson traces) and the bits allocator on tiny models."""

from __future__ import annotations

import random

import pytest
import torch
from slimformer.methods import Plan, apply_plan, get_adapter, model_size
from slimformer.methods.sensitivity import (
    bits_for_size,
    hutchinson_trace,
    inverse_order,
    layer_bytes,
    layer_sensitivity,
    sensitivity_plans,
)

BITS = (8, 4, 3, 2)


def _sizes(n, params=1000, group=64):
    return [{b: params * b / 8 + (params / group * 2 if b < 8 else 0) for b in BITS} for _ in range(n)]


@pytest.mark.parametrize("seed", range(5))
def test_allocator_meets_the_target_and_orders_bits_by_sensitivity(seed):
    rng = random.Random(seed)
    n = 8
    sens = [rng.uniform(0.01, 10) for _ in range(n)]
    sizes = _sizes(n)
    for frac in (0.3, 0.5, 0.62, 0.9):
        target = frac * sum(s[8] for s in sizes)
        bits = bits_for_size(sens, sizes, BITS, target)
        assert sum(sizes[i][b] for i, b in enumerate(bits)) <= target
        assert set(bits) <= set(BITS)
        for i in range(n):  # equal-size layers: more sensitive never gets fewer bits
            for j in range(n):
                if sens[i] > sens[j]:
                    assert bits[i] >= bits[j], (sens, bits)


def test_allocator_uses_the_headroom_and_refuses_impossible_targets():
    sizes = _sizes(4)
    full = sum(s[8] for s in sizes)
    assert bits_for_size([1, 2, 3, 4], sizes, BITS, full) == [8, 8, 8, 8]
    floor = sum(s[2] for s in sizes)
    assert bits_for_size([1, 2, 3, 4], sizes, BITS, floor) == [2, 2, 2, 2]
    with pytest.raises(ValueError, match="target"):
        bits_for_size([1, 2, 3, 4], sizes, BITS, floor - 1)


def test_allocator_weighs_measured_errors():
    sizes = _sizes(2)
    errors = [{8: 0.0, 4: 1.0, 3: 4.0, 2: 16.0}, {8: 0.0, 4: 100.0, 3: 400.0, 2: 1600.0}]
    target = sizes[0][8] + sizes[1][4]
    # the first layer is more sensitive, but rounding the second costs 100x more
    assert bits_for_size([10.0, 1.0], sizes, BITS, target, errors) == [4, 8]
    assert bits_for_size([10.0, 1.0], sizes, BITS, target) == [8, 4]


def test_inverse_order_swaps_the_assignment():
    assert inverse_order([8, 4, 2], [3.0, 2.0, 1.0]) == [2, 4, 8]


def test_hutchinson_estimates_the_trace_of_a_quadratic():
    torch.manual_seed(0)
    a = torch.randn(20, 20) * 0.1
    a = a @ a.t() + torch.diag(torch.rand(20) * 5)
    x = torch.randn(20, requires_grad=True)
    est = hutchinson_trace(lambda: 0.5 * x @ a @ x, [x], samples=200, generator=torch.Generator().manual_seed(1))
    assert abs(est - a.trace().item()) < 0.05 * a.trace().item()


@pytest.mark.parametrize("method", ["fisher", "hessian"])
def test_layer_sensitivity_on_a_tiny_model(tiny_models, method):
    tiny = tiny_models["bert"]
    model = tiny.build()
    req = [p.requires_grad for p in model.parameters()]
    scores = layer_sensitivity(model, tiny.calibration(), method)
    assert len(scores) == tiny.layers and all(torch.isfinite(torch.tensor(scores)))
    if method == "fisher":
        assert all(s > 0 for s in scores)
    assert [p.requires_grad for p in model.parameters()] == req
    assert all(p.grad is None for p in model.parameters())


def test_fisher_sensitivity_follows_the_loss(tiny_models):
    tiny = tiny_models["bert"]
    model = tiny.build()
    calib = tiny.calibration()
    before = layer_sensitivity(model, calib)
    with torch.no_grad():  # layer 1's FFN output scaled 5x: its input-side weights matter 25x more
        model.bert.encoder.layer[1].output.dense.weight.mul_(5)
    after = layer_sensitivity(model, calib)
    assert after[1] / before[1] > 2 * max(after[0] / before[0], after[2] / before[2])


def test_layer_bytes_matches_model_size(tiny_models):
    tiny = tiny_models["llama"]
    base = tiny.build()
    layer = get_adapter(base).layers()[0]
    for bits in (32, 16, 8, 4, 2):
        plan = Plan(bits=[bits, 32, 32], group_size=16)
        delta = model_size(base, 16)["size_bytes"] - model_size(apply_plan(base, plan), 16)["size_bytes"]
        assert abs(delta - (layer_bytes(layer, 32, 16) - layer_bytes(layer, bits, 16))) <= 1


def test_sensitivity_plans_fit_their_targets(tiny_models):
    tiny = tiny_models["bert"]
    base = tiny.build()
    calib = tiny.calibration()
    u8 = model_size(apply_plan(base, Plan(bits=8, group_size=16)), 16)["size_mb"]
    u4 = model_size(apply_plan(base, Plan(bits=4, group_size=16)), 16)["size_mb"]
    mid = (u8 + u4) / 2
    base_plan = Plan(layers=[0, 2], heads=[2, 4, 4], group_size=16)
    plans = sensitivity_plans(base, calib, base_plan, (8, 4, 3, 2), [mid], sensitivity=[3.0, 2.0, 1.0])
    assert plans[0].heads == base_plan.heads and plans[0].layers == (0, 2) and plans[0].bits[1] == 32
    sized = model_size(apply_plan(base, plans[0]), 16)["size_mb"]
    assert sized <= mid
    plans = sensitivity_plans(base, calib, Plan(group_size=16), (8, 4, 3, 2), [u4, mid])
    for plan, target in zip(plans, [u4, mid]):
        assert model_size(apply_plan(base, plan), 16)["size_mb"] <= target + 1e-9
