"""The shared contract: every registered method, on a tiny random model of every supported
architecture, gives a physically smaller (or narrower) model of the predicted size that
runs, leaves its input untouched, carries its plan, and saves/loads to the same outputs."""

from __future__ import annotations

import pytest
import torch
from slimformer.methods import (
    METHODS,
    Plan,
    apply_plan,
    get_adapter,
    load_compressed,
    model_size,
    save_compressed,
)
from slimformer.methods.registry import plan_of

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# name -> (plan, methods it exercises). Head counts are multiples of 2 so that the GQA
# model (4 query heads, 2 KV heads) accepts every plan.
CASES = {
    "prune_heads": (Plan(heads=[2, 4, 2]), {"prune"}),
    "prune_ffn": (Plan(ffn=[16, 64, 40]), {"prune"}),
    "prune_layers": (Plan(layers=[0, 2]), {"prune"}),
    "prune_to_zero": (Plan(heads=[0, 4, 2], ffn=[64, 0, 0]), {"prune"}),
    "zero_quantized": (Plan(heads=[0, 4, 2], ffn=[64, 0, 0], bits=[8, 16, 8]), {"prune", "quantize"}),
    "low_rank": (Plan(rank=8), {"low_rank"}),
    "mask_tuning": (Plan(heads=[2, 4, 2], ffn=[16, 64, 40], recovery="mask_tuning"), {"prune", "mask_tuning"}),
    "distill": (Plan(heads=2, distill={"steps": 2, "lr": 1e-2}), {"prune", "distill"}),
    "bits16": (Plan(bits=16), {"quantize"}),
    "bits8": (Plan(bits=8), {"quantize"}),
    "bits4": (Plan(bits=4, group_size=16), {"quantize"}),
    "gptq": (Plan(bits=[4, 8, 3], group_size=16, quant_method="gptq"), {"quantize"}),
    "smooth_gptq_pruned": (
        Plan(layers=[0, 2], heads=[0, 4, 2], ffn=[64, 64, 0], bits=[8, 32, 4], group_size=16,
             quant_method="gptq", smooth=0.5),
        {"prune", "quantize"},
    ),
    "combined": (
        Plan(layers=[0, 2], heads=[2, 4, 0], ffn=[32, 64, 16], rank=[8, 0, 4], bits=[8, 32, 16],
             distill={"steps": 1, "lr": 1e-3}),
        {"prune", "low_rank", "distill", "quantize"},
    ),
}


def param_count(model) -> int:
    """Parameters counted once each (tied tensors once), int8 packed weights included."""
    return model_size(model)["params"]


def expected_params(tiny, base, plan: Plan) -> int:
    """Parameter count predicted from the resolved plan and the layer shapes alone."""
    h, d, g = tiny.hidden, tiny.head_dim, tiny.heads // tiny.kv_heads
    per_q_head = 2 * d * h + d * tiny.qkv_bias  # q rows (+bias) and o columns
    per_kv_group = 2 * (d * h + d * tiny.qkv_bias)  # k and v rows (+bias)
    per_neuron = tiny.ffn_inputs * (h + tiny.ffn_bias) + h
    per_layer = sum(p.numel() for p in get_adapter(base).layers()[0].parameters())
    total = sum(p.numel() for p in base.parameters())
    for i in range(tiny.layers):
        if i not in plan.layers:
            total -= per_layer
            continue
        removed = tiny.heads - plan.heads[i]
        total -= removed * per_q_head + (removed // g) * per_kv_group
        if plan.heads[i] == 0 and tiny.qk_norm:
            total -= 2 * d  # the q and k norms go with the attention block
        f = plan.ffn[i]
        total -= (tiny.ffn - f) * per_neuron
        if plan.rank[i] and f:
            for out_f, in_f in [(f, h)] * tiny.ffn_inputs + [(h, f)]:
                r = min(plan.rank[i], out_f, in_f)
                total += r * (out_f + in_f) - out_f * in_f
    return total


def _logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def test_every_registered_method_is_covered():
    covered = set().union(*(methods for _, methods in CASES.values()))
    assert {m.name for m in METHODS} <= covered


def test_every_adapter_is_covered(tiny_models):
    from slimformer.methods import adapters

    used = {type(get_adapter(t.build())) for t in tiny_models.values()}
    assert used == set(adapters.registered_adapters())


@pytest.mark.parametrize("case", sorted(CASES))
def test_contract(tiny, case, tmp_path):
    plan, methods = CASES[case]
    base = tiny.build()
    inputs = tiny.inputs()
    data_needed = methods & {"distill", "mask_tuning"} or plan.quant_method == "gptq" or plan.smooth
    calib = tiny.calibration() if data_needed else None
    before_state = {k: v.clone() for k, v in base.state_dict().items()}
    before_config = base.config.to_dict()
    before_out = _logits(base, inputs)

    small = apply_plan(base, plan, calib)

    # the input model is untouched
    assert base.config.to_dict() == before_config
    after_state = base.state_dict()
    assert after_state.keys() == before_state.keys()
    assert all(torch.equal(after_state[k], v) for k, v in before_state.items())
    assert torch.equal(_logits(base, inputs), before_out)

    # same class, predicted size, forward runs with the right shapes
    resolved = plan.resolve(get_adapter(base).shape())
    assert type(small) is type(base)
    assert param_count(small) == expected_params(tiny, base, resolved)
    if methods == {"quantize"}:
        assert param_count(small) == param_count(base)
        assert model_size(small)["size_mb"] < model_size(base)["size_mb"]
    elif "prune" in methods or "low_rank" in methods:
        assert param_count(small) < param_count(base)
    adapter = get_adapter(small)
    assert adapter.shape().num_layers == len(resolved.layers)
    for pos, original in enumerate(resolved.layers):
        if resolved.bits[original] == 8:
            continue  # int8 layers hold packed weights; their sizes are checked by param_count
        layer = adapter.layers()[pos]
        assert adapter.num_heads(layer) == resolved.heads[original]
        if not resolved.rank[original]:  # low-rank FFN projections have no dense weight
            assert adapter.num_neurons(layer) == resolved.ffn[original]
    out = _logits(small, inputs)
    assert out.shape == before_out.shape == tiny.logits_shape()
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()

    # the plan travels with the model
    stored = plan_of(small)
    assert stored == resolved
    assert Plan.from_json(stored.to_json()) == stored
    assert Plan.from_yaml(stored.to_yaml()) == stored
    assert model_size(small)["simulated"] == resolved.simulated

    # save/load reproduces the outputs
    save_compressed(small, plan, tmp_path / "out")
    loaded, tokenizer, loaded_plan = load_compressed(tmp_path / "out")
    assert tokenizer is None
    assert loaded_plan == resolved
    assert type(loaded) is type(base)
    assert param_count(loaded) == param_count(small)
    again = _logits(loaded, inputs)
    assert again.shape == out.shape
    assert (again - out).abs().max().item() <= 1e-5


def test_distillation_changes_the_student(tiny_models):
    tiny = tiny_models["bert"]
    base = tiny.build()
    plain = apply_plan(base, Plan(heads=2))
    tuned = apply_plan(base, Plan(heads=2, distill={"steps": 3, "lr": 1e-2}), tiny.calibration())
    assert not torch.allclose(_logits(plain, tiny.inputs()), _logits(tuned, tiny.inputs()))


def kept_heads(base, small, layer_index: int, head_dim: int) -> list[int]:
    """Original indices of the query heads `small` kept in one layer (matched by weights)."""

    def q_blocks(model):
        adapter = get_adapter(model)
        wq = adapter.attention_weights(adapter.layers()[layer_index])[0]
        return wq.reshape(-1, head_dim, wq.shape[1])

    orig, new = q_blocks(base), q_blocks(small)
    return [next(j for j in range(orig.shape[0]) if torch.equal(orig[j], block)) for block in new]


def test_gqa_keeps_whole_kv_groups(tiny_models):
    tiny = tiny_models["llama"]
    d = tiny.head_dim
    base = tiny.build()
    small = apply_plan(base, Plan(heads=[2, 0, 4]))
    layers = get_adapter(small).layers()
    attn = layers[0].self_attn
    assert attn.q_proj.out_features == attn.o_proj.in_features == 2 * d
    assert attn.k_proj.out_features == attn.v_proj.out_features == 1 * d  # 1 of 2 KV groups
    heads = kept_heads(base, small, 0, d)
    assert heads in ([0, 1], [2, 3])  # the 2 query heads of one group
    group = heads[0] // 2
    k_orig = base.model.layers[0].self_attn.k_proj.weight
    assert torch.equal(attn.k_proj.weight, k_orig[group * d:(group + 1) * d])
    assert layers[2].self_attn.k_proj.out_features == 2 * d
    assert _logits(small, tiny.inputs()).shape == tiny.logits_shape()


def test_gqa_rejects_partial_groups(tiny_models):
    with pytest.raises(ValueError, match="heads"):
        apply_plan(tiny_models["llama"].build(), Plan(heads=3))


def test_fisher_importance_uses_the_data(tiny_models):
    tiny = tiny_models["bert"]
    base = tiny.build()
    by_magnitude = apply_plan(base, Plan(heads=1, ffn=8))
    by_fisher = apply_plan(base, Plan(heads=1, ffn=8, importance="fisher"), tiny.calibration(n_batches=3))
    assert param_count(by_fisher) == param_count(by_magnitude)
    assert _logits(by_fisher, tiny.inputs()).shape == tiny.logits_shape()
    picks = [(kept_heads(base, by_magnitude, i, tiny.head_dim), kept_heads(base, by_fisher, i, tiny.head_dim))
             for i in range(tiny.layers)]
    assert any(m != f for m, f in picks), picks
    assert plan_of(by_fisher).importance == "fisher"


def test_fisher_without_calibration_is_a_clear_error(tiny_models):
    with pytest.raises(ValueError, match="calibration"):
        apply_plan(tiny_models["bert"].build(), Plan(heads=2, importance="fisher"))


def test_fisher_needs_a_task_loss(tiny_models):
    from slimformer.methods import Calibration

    tiny = tiny_models["bert"]
    no_labels = Calibration([tiny.inputs()])
    with pytest.raises(ValueError, match="loss"):
        apply_plan(tiny.build(), Plan(heads=2, importance="fisher"), no_labels)


def test_unsupported_model_type_lists_supported_ones():
    import transformers as T

    torch.manual_seed(0)
    t5 = T.T5ForConditionalGeneration(T.T5Config(vocab_size=100, d_model=16, d_ff=32, d_kv=4, num_layers=1,
                                                 num_decoder_layers=1, num_heads=2))
    with pytest.raises(ValueError, match="t5") as info:
        apply_plan(t5, Plan(heads=1))
    for name in ("bert", "distilbert", "gpt2", "llama", "vit"):
        assert name in str(info.value)


def test_compressing_twice_is_refused(tiny_models):
    small = apply_plan(tiny_models["distilbert"].build(), Plan(heads=2))
    with pytest.raises(ValueError, match="already compressed"):
        apply_plan(small, Plan(ffn=8))


def test_plan_is_checked_against_the_model(tiny_models):
    base = tiny_models["gpt2"].build()
    with pytest.raises(ValueError, match="layers"):
        apply_plan(base, Plan(layers=[0, 3]))
    with pytest.raises(ValueError, match="heads"):
        apply_plan(base, Plan(heads=5))
    with pytest.raises(ValueError, match="ffn"):
        apply_plan(base, Plan(ffn=[8, 8]))


def test_same_plan_same_model(tiny_models):
    tiny = tiny_models["vit"]
    base = tiny.build()
    plan = Plan(heads=[1, 2, 3], ffn=20, rank=[4, 0, 0], bits=[32, 4, 32], group_size=8)
    a, b = apply_plan(base, plan), apply_plan(base, plan)
    assert torch.equal(_logits(a, tiny.inputs()), _logits(b, tiny.inputs()))
