"""The distillation learning-rate schedule: warm-up over the first 10% of the steps, then a
linear fall to 0, so a short recovery run ends on small steps instead of mid-trajectory."""

from __future__ import annotations

import pytest
from slimformer.methods.distill import lr_factor


@pytest.mark.parametrize("steps", [1, 3, 10, 100, 300])
def test_warm_up_then_linear_decay_to_zero(steps):
    f = [lr_factor(s, steps) for s in range(steps)]
    warm = max(1, steps // 10)
    assert f[warm - 1] == 1.0 and max(f) == 1.0
    assert all(a < b for a, b in zip(f[:warm - 1], f[1:warm]))  # rising during warm-up
    assert all(a > b for a, b in zip(f[warm - 1:], f[warm:]))  # then strictly falling
    assert f[-1] == pytest.approx(1.0 / (steps - warm + 1))  # the last step is the smallest, above 0


def test_first_step_of_a_long_run_is_small():
    assert lr_factor(0, 300) == pytest.approx(1 / 30)
    assert lr_factor(150, 300) == pytest.approx(150 / 271)


# ----- the attention-map loss ------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_attention_loss_trains_the_student_and_restores_sdpa(tiny_models, arch):
    """TinyBERT's attention loss: the maps exist only under eager attention, so distillation
    switches teacher and student to eager and back; layers without heads are skipped."""
    import torch
    from slimformer.methods import Plan, apply_plan
    from slimformer.methods.distill import _attention_maps, _eager_attention, _run

    tiny = tiny_models[arch]
    base = tiny.build()
    assert base.config._attn_implementation == "sdpa"
    inputs = tiny.inputs()
    with torch.no_grad(), _eager_attention(base, True):
        maps = _attention_maps(_run(base, inputs, ("attention",)))
    assert base.config._attn_implementation == "sdpa"  # put back
    assert len(maps) == base.config.num_hidden_layers and maps[0].shape[1] == maps[0].shape[2]
    rows = maps[0][inputs["attention_mask"].bool()] if "attention_mask" in inputs else maps[0].flatten(0, 1)
    assert torch.allclose(rows.sum(-1), torch.ones(len(rows)), atol=1e-5)  # probabilities over keys

    heads = [2, 0, 4] if arch == "llama" else [2, 0, 2]  # the middle layer loses its attention
    plain = apply_plan(base, Plan(heads=heads))
    spec = {"steps": 3, "lr": 1e-2, "losses": ["attention"]}
    tuned = apply_plan(base, Plan(heads=heads, distill=spec), tiny.calibration())
    assert tuned.config._attn_implementation == "sdpa" and base.config._attn_implementation == "sdpa"
    with torch.no_grad():
        a, b = plain(**inputs), tuned(**inputs)
    first = a.logits if hasattr(a, "logits") else a.last_hidden_state
    second = b.logits if hasattr(b, "logits") else b.last_hidden_state
    assert torch.isfinite(second).all() and not torch.allclose(first, second)


def test_attention_loss_ignores_padding_and_headless_layers():
    import torch
    from slimformer.methods.distill import _attention_loss

    t = [torch.full((2, 3, 3), 1 / 3), torch.full((2, 3, 3), 1 / 3)]
    s = [t[0].clone(), None]  # student layer 1 has no heads
    s[0][1, 2] = torch.tensor([1.0, 0.0, 0.0])  # differs only on a padding query
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert _attention_loss(s, t, (0, 1), mask).item() == 0.0
    assert _attention_loss(s, t, (0, 1), None).item() > 0.0


# ----- logits KD on per-token logits ------------------------------------------------------------
def test_logits_kd_per_token_ignores_padding():
    """Causal LMs give logits per token: KD averages over the real tokens, so what the teacher
    says at padding positions changes nothing, and a student equal to its teacher costs 0."""
    import torch
    from slimformer.methods.distill import logits_kd

    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    loss = logits_kd(student, teacher, 2.0, mask)
    noisy = teacher.clone()
    noisy[1, 2:] = torch.randn(3, 7, generator=g) * 10  # the padded positions of the second row
    assert logits_kd(student, noisy, 2.0, mask) == pytest.approx(loss.item())
    assert logits_kd(student, noisy, 2.0, None) != pytest.approx(loss.item())  # without the mask they count
    assert logits_kd(teacher, teacher, 2.0, mask).item() == pytest.approx(0.0, abs=1e-6)
    # per token: the loss of 7 real tokens is their mean, not their sum over a batch of 2
    per_token = [logits_kd(student[i, j][None], teacher[i, j][None], 2.0, None) for i, j in mask.nonzero().tolist()]
    assert loss.item() == pytest.approx(torch.stack(per_token).mean().item(), rel=1e-5)


def test_logits_kd_on_a_tiny_causal_lm(tiny_models):
    """A pruned tiny Llama distilled with the logits loss on a batch moves towards its teacher there."""
    import torch
    from slimformer.methods import Calibration, Plan, apply_plan
    from slimformer.methods.distill import logits_kd

    tiny = tiny_models["llama"]
    base = tiny.build()
    inputs = tiny.inputs()
    plan = {"heads": 2, "ffn": 16}
    before = apply_plan(base, Plan.from_dict(plan))
    spec = {"steps": 30, "lr": 3e-3, "losses": ["logits"], "alpha": 1.0, "temperature": 1.0}  # pure KD
    after = apply_plan(base, Plan.from_dict({**plan, "distill": spec}), Calibration([tiny.inputs(labels=True)]))
    with torch.no_grad():
        t = base(**inputs).logits
        mask = inputs["attention_mask"]
        gap_before = logits_kd(before(**inputs).logits, t, 1.0, mask).item()
        gap_after = logits_kd(after(**inputs).logits, t, 1.0, mask).item()
    assert gap_after < 0.5 * gap_before
