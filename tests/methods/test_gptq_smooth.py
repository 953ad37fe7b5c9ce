"""GPTQ and SmoothQuant scaling on tiny models: GPTQ beats round-to-nearest on the layer
outputs it was calibrated on, int8 GPTQ stays a real int8 kernel, smoothing is exact in float32,
and both need calibration data."""

from __future__ import annotations

import copy

import pytest
import torch
from slimformer.methods import Plan, apply_plan, get_adapter, load_compressed, model_size, save_compressed
from slimformer.methods.gptq import dequantize, gptq_quantize
from slimformer.methods.quantize import BITS_ATTR, fake_quantize_weight
from slimformer.methods.smooth import InputScale, smooth_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _dynamic_int8(module) -> bool:
    from torch.ao.nn.quantized.dynamic import Linear

    return isinstance(module, Linear)


def _correlated_inputs(n=512, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) / d**0.5
    x = torch.randn(n, d, generator=g) @ mix
    x[:, 3] *= 20  # an outlier channel
    return x


@pytest.mark.parametrize("act_order", [True, False])
@pytest.mark.parametrize("bits, group", [(4, 16), (3, 32), (8, None)])
def test_gptq_lowers_output_error_and_stays_on_the_grid(bits, group, act_order):
    torch.manual_seed(0)
    w = torch.randn(24, 64)
    x = _correlated_inputs()
    h = 2 * x.t().double() @ x.double() / len(x)
    q, scale = gptq_quantize(w, h, bits, group, act_order=act_order)
    assert q.min() >= -(2 ** (bits - 1)) and q.max() <= 2 ** (bits - 1) - 1
    assert torch.equal(q, q.round())
    assert scale.shape == (24, 64 // group if group else 1)
    wq = dequantize(q, scale)
    rtn = fake_quantize_weight(w, bits, group or 64)
    err_gptq = (x @ (wq - w).t()).pow(2).mean()
    err_rtn = (x @ (rtn - w).t()).pow(2).mean()
    assert err_gptq < 0.8 * err_rtn, (err_gptq, err_rtn)


def _linear_inputs(model, tiny, calib, pos=0):
    """Inputs of every Linear in layer `pos` of `model`, over the calibration batches."""
    layer = get_adapter(model).layers()[pos]
    seen: dict[str, list] = {}
    handles = [m.register_forward_pre_hook(lambda mod, a, name=name: seen.setdefault(name, []).append(
        a[0].reshape(-1, a[0].shape[-1]))) for name, m in layer.named_modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for batch in calib.batches:
            model(**calib.model_inputs(batch)[0])
    for h in handles:
        h.remove()
    return {k: torch.cat(v) for k, v in seen.items()}


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_gptq_reconstructs_layer_outputs_better_than_rtn(tiny_models, arch):
    tiny = tiny_models[arch]
    base = tiny.build()
    calib = tiny.calibration(n_batches=6)
    inputs = _linear_inputs(base, tiny, calib)
    errors = {}
    for method in ("rtn", "gptq"):
        small = apply_plan(base, Plan(bits=3, group_size=16, quant_method=method), calib)
        layer, ref = get_adapter(small).layers()[0], get_adapter(base).layers()[0]
        errors[method] = sum(
            (x @ (layer.get_submodule(name).weight - ref.get_submodule(name).weight).t()).pow(2).sum().item()
            for name, x in inputs.items())
        assert all(getattr(m, BITS_ATTR) == 3 for m in layer.modules() if isinstance(m, torch.nn.Linear))
    assert errors["gptq"] < 0.9 * errors["rtn"], errors


def test_int8_gptq_layers_are_real_int8_kernels(tiny_models):
    tiny = tiny_models["gpt2"]  # Conv1D projections too
    base = tiny.build()
    calib = tiny.calibration(n_batches=4)
    rtn = apply_plan(base, Plan(bits=8))
    gptq = apply_plan(base, Plan(bits=8, quant_method="gptq"), calib)
    mods = [m for m in get_adapter(gptq).layers()[0].modules() if _dynamic_int8(m)]
    assert len(mods) == 4 and all(m.weight().dtype == torch.qint8 for m in mods)
    ref = [m for m in get_adapter(rtn).layers()[0].modules() if _dynamic_int8(m)]
    assert any(not torch.equal(a.weight().int_repr(), b.weight().int_repr()) for a, b in zip(mods, ref))
    assert model_size(gptq)["size_bytes"] == model_size(rtn)["size_bytes"]
    assert model_size(gptq)["simulated"] is False
    with torch.no_grad():
        out, want = gptq(**tiny.inputs()).logits, base(**tiny.inputs()).logits
    assert torch.nn.functional.cosine_similarity(out.flatten(), want.flatten(), dim=0) > 0.99


@pytest.mark.parametrize("plan", [Plan(bits=4, quant_method="gptq"), Plan(bits=8, smooth=0.5)])
def test_gptq_and_smoothing_need_calibration(tiny_models, plan):
    with pytest.raises(ValueError, match="data.calibration"):
        apply_plan(tiny_models["bert"].build(), plan)


def test_smoothing_touches_only_int8_and_lower_layers(tiny_models):
    tiny = tiny_models["bert"]
    small = apply_plan(tiny.build(), Plan(bits=[16, 32, 16], smooth=0.5))  # nothing to smooth: no data needed
    assert not any(isinstance(m, InputScale) for m in small.modules())
    small = apply_plan(tiny.build(), Plan(bits=[8, 32, 4], smooth=0.5), tiny.calibration())
    layers = get_adapter(small).layers()
    assert [sum(isinstance(m, InputScale) for m in layer.modules()) for layer in layers] == [4, 0, 4]


def test_smoothing_preserves_float32_outputs(tiny):
    base = tiny.build()
    calib = tiny.calibration()
    inputs = tiny.inputs()
    model = copy.deepcopy(base)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    logs: list[str] = []
    groups = smooth_model(model, [0, 1, 2], 0.5, calib, log=logs.append)
    assert groups == 6  # attention and FFN input of each of the 3 layers
    with torch.no_grad():
        want, got = base(**inputs).logits, model(**inputs).logits
    assert (got - want).abs().max().item() < 1e-4
    wrapped = [m for m in model.modules() if isinstance(m, InputScale)]
    if tiny.post_norm:  # post-norm: the LayerNorm output is also the residual
        assert len(wrapped) == 3 * (3 + 1) and any("post-norm" in m for m in logs)
    else:  # pre-norm: folded into the norm, nothing added
        assert not wrapped
        changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
        assert any("norm" in k or "ln_" in k for k in changed)


def test_smoothing_is_exact_after_pruning_and_layer_dropping(tiny):
    plan = Plan(layers=[0, 2], heads=[0, 4, 2], ffn=[64, 64, 0])
    pruned = apply_plan(tiny.build(), plan)
    smoothed = copy.deepcopy(pruned)
    logs: list[str] = []
    groups = smooth_model(smoothed, [0, 1], 0.8, tiny.calibration(), log=logs.append)
    assert groups == 2  # layer 0 lost its attention, layer 2 (now 1) its FFN
    assert sum("skipped" in m for m in logs) == 2
    with torch.no_grad():
        want, got = pruned(**tiny.inputs()).logits, smoothed(**tiny.inputs()).logits
    assert (got - want).abs().max().item() < 1e-4


def test_smoothing_flattens_activation_outliers(tiny_models):
    tiny = tiny_models["llama"]
    base = tiny.build()
    with torch.no_grad():  # one input channel of the first norm becomes a 50x outlier
        base.model.layers[0].input_layernorm.weight[5] = 50.0
    calib = tiny.calibration()

    def spread(model):
        seen = []
        h = model.model.layers[0].self_attn.q_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
        with torch.no_grad():
            model(**calib.model_inputs(calib.batches[0])[0])
        h.remove()
        amax = seen[0].reshape(-1, seen[0].shape[-1]).abs().amax(0)
        return (amax.max() / amax.median()).item()

    model = copy.deepcopy(base)
    smooth_model(model, [0], 0.5, calib)
    assert spread(model) < spread(base) / 3


def test_gptq_smooth_bert_save_load_is_exact(tiny_models, tmp_path):
    tiny = tiny_models["bert"]
    plan = Plan(heads=[2, 4, 4], bits=[8, 4, 16], group_size=16, quant_method="gptq", smooth=0.5)
    small = apply_plan(tiny.build(), plan, tiny.calibration())
    save_compressed(small, plan, tmp_path / "out")
    loaded, _, loaded_plan = load_compressed(tmp_path / "out")
    assert loaded_plan.quant_method == "gptq" and loaded_plan.smooth == 0.5
    assert sum(isinstance(m, InputScale) for m in loaded.modules()) == 8  # not the bf16 layer
    with torch.no_grad():
        assert torch.equal(loaded(**tiny.inputs()).logits, small(**tiny.inputs()).logits)
