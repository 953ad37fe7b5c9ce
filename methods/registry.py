"""Registered compression methods and `apply_plan`, which composes them in a fixed order:
prune -> mask tuning -> low-rank -> distil -> quantize.

A plan is resolved against a model's shape once (`resolve_plan`): the ResolvedPlan holds the full
per-layer plan and each method's spec, and answers what the methods need (`needs_calibration`);
`apply_plan` takes it as it is instead of resolving the plan again."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from .adapters import get_adapter
from .calibration import Calibration, Context
from .distill import DistillStage, distill
from .lowrank import LowRankSpec, low_rank
from .masktune import MaskTuneSpec, mask_tune
from .plan import Plan
from .prune import PruneSpec, prune
from .quantize import QuantSpec, needs_calibration, quantize
from .surgery import attention_of, set_attention

__all__ = ["Method", "METHODS", "ResolvedPlan", "resolve_plan", "apply_plan", "plan_of", "plan_needs_calibration",
           "CONFIG_KEY"]

CONFIG_KEY = "slimformer"


@dataclass(frozen=True)
class Method:
    """A compression method: how to read its spec off a resolved plan, and its handler."""

    name: str
    spec_from_plan: Callable[[Plan], Any | None]  # None: nothing to do for this plan
    handler: Callable[[nn.Module, Any, Context], nn.Module]
    needs_calibration: Callable[[Any], bool]  # whether this spec reads calibration batches


METHODS: tuple[Method, ...] = (
    Method("prune", PruneSpec.from_plan, prune, lambda spec: spec.importance == "fisher"),
    Method("mask_tuning", MaskTuneSpec.from_plan, mask_tune, lambda spec: True),
    Method("low_rank", LowRankSpec.from_plan, low_rank, lambda spec: False),
    Method("distill", DistillStage.from_plan, distill, lambda spec: True),
    Method("quantize", QuantSpec.from_plan, quantize, needs_calibration),  # gptq or smoothing at <= 8 bits
)


@dataclass(frozen=True)
class ResolvedPlan:
    """A plan resolved against a model's shape, once: `plan` (full per-layer lists) and the spec of
    each method with work to do, in the order they run."""

    plan: Plan
    specs: tuple[tuple[Method, Any], ...]

    @property
    def needs_calibration(self) -> bool:
        """Whether building it reads calibration data: asked of each method that has work to do (Fisher
        importance, mask tuning, distillation, GPTQ or smoothing on a layer quantized to 8 bits or fewer,
        static int8 activations)."""
        return any(method.needs_calibration(spec) for method, spec in self.specs)


def resolve_plan(plan: Plan | ResolvedPlan, shape) -> ResolvedPlan:
    """`plan` resolved against a model of this shape, each method's spec read once (a ResolvedPlan as it is)."""
    if isinstance(plan, ResolvedPlan):
        return plan
    resolved = plan.resolve(shape)
    return ResolvedPlan(resolved, tuple((m, spec) for m in METHODS if (spec := m.spec_from_plan(resolved)) is not None))


def plan_needs_calibration(plan: Plan, shape) -> bool:
    """Whether building `plan` on a model of this shape reads calibration batches (ResolvedPlan.needs_calibration)."""
    return resolve_plan(plan, shape).needs_calibration


def plan_of(model: nn.Module) -> Plan | None:
    """The plan a compressed model was built with (None for an uncompressed model)."""
    info = getattr(model.config, CONFIG_KEY, None)
    return Plan.from_dict(info["plan"]) if info else None


def apply_plan(
    model: nn.Module,
    plan: Plan | ResolvedPlan,
    calibration: Calibration | None = None,
    *,
    structure_only: bool = False,
    log: Callable[[str], None] | None = None,
    corpus=None,
    deadline: float | None = None,
) -> nn.Module:
    """A new, physically smaller copy of `model` built by `plan`; `model` is left untouched.

    `plan` may come resolved against this model (`resolve_plan`), as the searcher's workbench hands it.
    `plan.attention` (when set) is the attention implementation the copy runs with.
    `calibration` feeds Fisher importance, mask tuning and distillation. `structure_only` rebuilds the
    shapes only (used when loading a saved model whose weights then overwrite them). `corpus` (a
    DistillCorpus) is what distillation trains on instead of the calibration batches; `deadline`
    (time.monotonic()) cuts its steps to fit, and the plan stored on the model says how many ran.
    """
    if getattr(model.config, CONFIG_KEY, None):
        raise ValueError("this model is already compressed; apply plans to the uncompressed model")
    # resolved here unless handed over resolved (the adapter lookup also refuses an unsupported model); a
    # method missing the calibration it needs says so itself (methods/importance.py, masktune.py, ...)
    work = plan if isinstance(plan, ResolvedPlan) else resolve_plan(plan, get_adapter(model).shape())
    resolved = work.plan
    original_config = model.config.to_dict()
    was_training = model.training
    model.eval()
    student = copy.deepcopy(model)
    ctx = Context(
        calibration=calibration,
        teacher=model if resolved.distill.enabled else None,
        source=model,
        structure_only=structure_only,
        log=log or (lambda msg: None),
        corpus=corpus,
        deadline=deadline,
    )
    for method, spec in work.specs:
        student = method.handler(student, spec, ctx)
    ran = ctx.notes.get("distill_steps", resolved.distill.steps)
    if ran != resolved.distill.steps:  # cut by the deadline: the stored plan says what ran
        resolved = replace(resolved, distill=replace(resolved.distill, steps=ran))
    if resolved.attention is not None and not set_attention(student, resolved.attention):
        raise ValueError(f"attention {resolved.attention!r}: this model cannot use that implementation")
    model.train(was_training)
    setattr(
        student.config,
        CONFIG_KEY,
        {
            "plan": resolved.to_dict(),
            "original_config": original_config,
            "model_class": type(model).__name__,
            "simulated": resolved.simulated,
            "source_attention": attention_of(model),  # what runs without the plan's `attention` (graph exports)
        },
    )
    student.eval()
    return student
