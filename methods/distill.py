"""Knowledge distillation from the uncompressed model (the teacher) into the pruned one.

Losses (any combination, summed):
- "embedding": 1 - cosine + MSE between pooled features (sentence-embedding models);
- "logits": temperature-scaled KL divergence of the logits (Hinton et al. 2015), mixed
  with the task loss by `alpha` when the calibration gives one; per token over the real
  (non-padding) tokens for language models;
- "hidden": MSE between hidden states, each kept student layer matched to the teacher
  layer it came from (TinyBERT-style layer map, so dropped layers are skipped);
- "attention": MSE between attention maps (TinyBERT, Jiao et al. 2020) with the same layer
  map, on the maps averaged over heads (a pruned layer keeps fewer heads than the teacher's),
  over the real (non-padding) query tokens. PyTorch's fused SDPA attention returns no maps,
  so teacher and student are switched to eager attention for the distillation and switched
  back afterwards. Layers whose attention was removed (0 heads) are skipped.
Teacher outputs are computed once per calibration set and cached on it; a DistillCorpus
(methods/corpus.py, used by `slimformer finish`) caches or streams them itself. Batches come in
a fresh seeded order every epoch.

The learning rate warms up over the first 10% of the steps and then falls linearly to 0 (the
BERT fine-tuning schedule, Devlin et al. 2019). A constant rate stops mid-trajectory: on the
SST-2 teacher, 100 constant-rate steps took a 2x plan from 85.89% to 80.85% dev accuracy, the
schedule from 85.89% to 85.55% (benchmarks/results/recovery_results.md).
"""

from __future__ import annotations

import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .calibration import Calibration, Context
from .plan import DistillSpec

__all__ = ["DistillStage", "distill", "logits_kd", "lr_factor", "mean_pool", "teacher_outputs", "PROBE_STEPS"]


@dataclass(frozen=True)
class DistillStage:
    spec: DistillSpec
    layers: tuple[int, ...]
    heads: tuple[int, ...]  # per original layer (the plan is resolved): which layers keep attention

    @classmethod
    def from_plan(cls, plan) -> DistillStage | None:
        return cls(plan.distill, plan.layers, plan.heads) if plan.distill.enabled else None

    def attention_layers(self, n_maps: int) -> list[int]:
        """The original layer index of each attention map the student returns: a layer whose
        heads were all removed has no attention module left, so it returns no map."""
        if n_maps == len(self.layers):
            return list(self.layers)
        return [orig for orig in self.layers if self.heads[orig] > 0]


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return hidden.mean(1)
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


def _features(calib: Calibration, inputs: dict, out) -> torch.Tensor:
    """What the embedding loss compares, from the forward pass already run (never a second one)."""
    if calib.features is not None:
        return calib.features(out, inputs)
    return mean_pool(out.hidden_states[-1], inputs.get("attention_mask"))


def _run(model, inputs, losses, calib: Calibration | None = None):
    hidden = "hidden" in losses or ("embedding" in losses and (calib is None or calib.features is None))
    return model(**inputs, output_hidden_states=hidden, output_attentions="attention" in losses)


@contextmanager
def _eager_attention(model: nn.Module, needed: bool):
    """Run `model` with eager attention inside the block when attention maps are needed."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    switch = needed and impl not in (None, "eager") and hasattr(model, "set_attn_implementation")
    if switch:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(impl)


def _attention_maps(out) -> list:
    """Per layer: the attention probabilities averaged over heads (batch, query, key), or None
    for a layer without attention heads."""
    maps = getattr(out, "attentions", None)
    if not maps:
        raise ValueError("distill.losses 'attention': the model returned no attention maps")
    return [None if a is None or a.shape[1] == 0 else a.mean(1) for a in maps]


def _attention_loss(student: list, teacher: list, layers, mask) -> torch.Tensor:
    """Mean over layers of the MSE between the student's map and its teacher layer's map;
    `layers[j]` is the teacher layer of student map j."""
    loss, used = torch.zeros(()), 0
    for s, orig in zip(student, layers):
        t = teacher[orig]
        if s is None or t is None:
            continue
        if mask is not None and mask.dim() == 2 and tuple(mask.shape) == tuple(s.shape[:2]):
            keep = mask.bool()
            s, t = s[keep], t[keep]
        loss = loss + F.mse_loss(s, t)
        used += 1
    return loss / max(1, used)


def logits_kd(student: torch.Tensor, teacher: torch.Tensor, tau: float, mask: torch.Tensor | None) -> torch.Tensor:
    """Hinton KD: KL(teacher || student) of the temperature-softened distributions, times tau^2,
    averaged over examples, or for per-token logits (batch, tokens, vocab: causal LMs) over the
    real tokens only (padding positions carry no target)."""
    if student.dim() == 3:
        if mask is not None and tuple(mask.shape) == tuple(student.shape[:2]):
            keep = mask.bool()
            student, teacher = student[keep], teacher[keep]
        else:
            student, teacher = student.flatten(0, 1), teacher.flatten(0, 1)
    return F.kl_div(F.log_softmax(student / tau, -1), F.softmax(teacher / tau, -1), reduction="batchmean") * tau * tau


def teacher_outputs(teacher, data, losses, batch) -> list[dict]:
    """The teacher's targets for one batch: per model input, a dict loss name -> tensor. `data` is a
    Calibration or a DistillCorpus (model_inputs, features)."""
    per_input = []
    with torch.no_grad():
        for inputs in data.model_inputs(batch):
            out = _run(teacher, inputs, losses, data)
            t = {}
            if "embedding" in losses:
                t["embedding"] = _features(data, inputs, out)
            if "logits" in losses:
                t["logits"] = out.logits
            if "hidden" in losses:
                t["hidden"] = out.hidden_states
            if "attention" in losses:
                t["attention"] = _attention_maps(out)
            per_input.append(t)
    return per_input


def _teacher_targets(teacher, calib: Calibration, spec: DistillSpec):
    """Teacher outputs of every calibration batch, computed once and cached on the calibration."""
    per_teacher = calib.__dict__.setdefault("_teacher_cache", weakref.WeakKeyDictionary())
    cache = per_teacher.setdefault(teacher, {})
    key = spec.losses
    if key not in cache:
        with _eager_attention(teacher, "attention" in spec.losses):
            cache[key] = [teacher_outputs(teacher, calib, spec.losses, batch) for batch in calib.batches]
    return cache[key]


def _calibration_stream(teacher, calib: Calibration, spec: DistillSpec, seed: int = 0):
    """Endless (batch, targets) over the calibration batches, in a fresh seeded order every epoch."""
    targets = _teacher_targets(teacher, calib, spec)
    g = torch.Generator().manual_seed(seed)
    while True:
        for b in torch.randperm(len(calib.batches), generator=g).tolist():
            yield calib.batches[b], targets[b]


def lr_factor(step: int, steps: int) -> float:
    """Multiplier of the learning rate at `step` of `steps`: linear warm-up over the first 10%,
    then linear decay to 0 at the end."""
    warm = max(1, steps // 10)
    if step < warm:
        return (step + 1) / warm
    return max(0.0, (steps - step) / (steps - warm + 1))


PROBE_STEPS = 10  # with a deadline, steps timed before the step count is fixed


def distill(model: nn.Module, stage: DistillStage, ctx: Context) -> nn.Module:
    """Distil `model` from `ctx.teacher` for `stage.spec.steps` steps on `ctx.corpus` (a
    DistillCorpus: shuffled every epoch) or else on the calibration batches (in a shuffled order
    every epoch). With `ctx.deadline`, the first PROBE_STEPS steps are timed and the step count
    is cut to what fits before it (the schedule decays to 0 at the cut); the steps run are in
    `ctx.notes["distill_steps"]`."""
    if ctx.structure_only:
        return model
    calib, teacher, spec = ctx.calibration, ctx.teacher, stage.spec
    data = ctx.corpus if ctx.corpus is not None else calib
    if data is None or teacher is None:
        raise ValueError("distillation needs calibration batches (or a corpus) and the teacher model")
    trainable = {id(p): p.requires_grad for p in model.parameters()}
    if spec.freeze_embeddings:
        for name, p in model.named_parameters():
            if "embed" in name or "wte" in name or "wpe" in name:
                p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.0)
    total = [spec.steps]  # cut by the deadline after the probe
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, total[0]))
    model.train(spec.dropout)  # off unless asked: short recovery runs are steadier without it
    started = time.monotonic()
    # attention maps need eager attention; the finally puts the model's own implementation back
    with _eager_attention(model, "attention" in spec.losses), _eager_attention(teacher, "attention" in spec.losses):
        if ctx.corpus is not None:
            stream = ctx.corpus.stream(lambda b: teacher_outputs(teacher, data, spec.losses, b), spec.losses)
        else:
            stream = _calibration_stream(teacher, calib, spec)
        step = 0
        while step < total[0]:
            batch, targets = next(stream)
            loss = _loss(model, stage, data, batch, targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if ctx.deadline is not None and step == min(PROBE_STEPS, total[0]):
                rate = (time.monotonic() - started) / step
                fits = step + int(max(0.0, ctx.deadline - time.monotonic()) / rate)
                if fits < total[0]:
                    ctx.log(f"distill: {fits} of {total[0]} steps fit before the deadline "
                            f"({rate:.2f} s per step); the schedule ends there")
                    total[0] = max(step, fits)
            if step % 50 == 0 or step == total[0]:
                elapsed = time.monotonic() - started
                ctx.log(f"distill step {step}/{total[0]} loss {loss.item():.4f} ({elapsed:.0f} s, "
                        f"about {elapsed / step * (total[0] - step):.0f} s left)")
    ctx.notes["distill_steps"] = total[0]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(trainable[id(p)])
    return model


def _loss(model, stage: DistillStage, data, batch, targets) -> torch.Tensor:
    spec = stage.spec
    loss = torch.zeros(())
    for inputs, tgt in zip(data.model_inputs(batch), targets):
        out = _run(model, inputs, spec.losses, data)
        if "embedding" in spec.losses:
            s, t = _features(data, inputs, out), tgt["embedding"]
            loss = loss + (1 - F.cosine_similarity(s, t, dim=-1)).mean() + F.mse_loss(s, t)
        if "logits" in spec.losses:
            kd = logits_kd(out.logits, tgt["logits"], spec.temperature, inputs.get("attention_mask"))
            loss = loss + spec.alpha * kd
        if "hidden" in spec.losses:
            for j, orig in enumerate(stage.layers):
                loss = loss + F.mse_loss(out.hidden_states[j + 1], tgt["hidden"][orig + 1]) / len(stage.layers)
        if "attention" in spec.losses:
            maps = _attention_maps(out)
            loss = loss + _attention_loss(maps, tgt["attention"], stage.attention_layers(len(maps)),
                                          inputs.get("attention_mask"))
    if "logits" in spec.losses and spec.alpha < 1:
        try:
            loss = loss + (1 - spec.alpha) * data.loss_fn(model, batch)
        except ValueError:
            pass  # no labels: pure distillation
    return loss
