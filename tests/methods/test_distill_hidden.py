"""The `hidden` distillation loss: each kept student layer's output is pulled towards the output
of the teacher layer it came from (dropped layers skipped), so a pruned tiny BERT distilled with
it alone ends much closer to its teacher's hidden states, layer for layer."""

from __future__ import annotations

import torch
from slimformer.methods import Plan, apply_plan

PLAN = {"layers": [0, 2], "heads": [2, 4, 1], "ffn": [16, 64, 32]}  # layer 1 dropped


def _hidden_gap(student, teacher, inputs, layers) -> float:
    """Mean over the kept layers of the MSE between student layer j and teacher layer layers[j]."""
    with torch.no_grad():
        s = student(**inputs, output_hidden_states=True).hidden_states
        t = teacher(**inputs, output_hidden_states=True).hidden_states
    return sum(torch.nn.functional.mse_loss(s[j + 1], t[orig + 1]).item() for j, orig in enumerate(layers)) / len(layers)


def test_hidden_loss_pulls_the_kept_layers_to_their_teacher_layers(tiny_models):
    tiny = tiny_models["bert"]
    teacher = tiny.build()
    calib = tiny.calibration(n_batches=2)
    inputs = tiny.inputs(seed=10)  # a calibration batch (without its labels)
    plain = apply_plan(teacher, Plan.from_dict(PLAN))
    spec = {"steps": 20, "lr": 3e-3, "losses": ["hidden"], "freeze_embeddings": True}
    tuned = apply_plan(teacher, Plan.from_dict({**PLAN, "distill": spec}), calib)
    before = _hidden_gap(plain, teacher, inputs, PLAN["layers"])
    after = _hidden_gap(tuned, teacher, inputs, PLAN["layers"])
    assert after < 0.5 * before, (before, after)
    # the layer map matters: against the teacher's layer 1 (the dropped one) the second kept
    # layer was not trained, so it gains less there than against layer 2, its own
    with torch.no_grad():
        s = tuned(**inputs, output_hidden_states=True).hidden_states[2]
        t = teacher(**inputs, output_hidden_states=True).hidden_states
    assert torch.nn.functional.mse_loss(s, t[3]) < torch.nn.functional.mse_loss(s, t[2])
