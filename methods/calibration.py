"""Calibration data handed to data-dependent methods (Fisher importance, distillation), and
the forward-hook plumbing those methods use to capture what a forward pass sees."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Calibration", "Context", "default_loss", "default_inputs", "StopForward", "removing_hooks", "forward_until_stop"]

Batch = dict[str, Any]


def default_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    out = model(**batch)
    loss = getattr(out, "loss", None)
    if loss is None:
        raise ValueError(
            "calibration batches give no loss: pass labels in the batches or a loss_fn "
            "(Fisher importance needs a task loss; self-distillation has zero gradient at the unpruned model)"
        )
    return loss


def default_inputs(batch: Batch) -> list[Batch]:
    return [{k: v for k, v in batch.items() if k not in ("labels", "label", "score")}]


@dataclass
class Calibration:
    """Batches of task data plus how to turn one into a loss and into model inputs.

    batches: task batches (dicts); their layout belongs to the task.
    loss_fn(model, batch) -> scalar task loss (default: the model's own `loss` output).
    model_inputs(batch) -> list of keyword dicts for `model(**inputs)` (default: the batch
        without its labels); sentence pairs give two.
    features(output, inputs) -> the tensor a distillation "embedding" loss compares, read
        from the output of the forward pass distillation already ran (default: mean of the
        last hidden state over the attention mask).
    """

    batches: Sequence[Batch]
    loss_fn: Callable[[torch.nn.Module, Batch], torch.Tensor] = default_loss
    model_inputs: Callable[[Batch], list[Batch]] = default_inputs
    features: Callable[[Any, Batch], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if len(self.batches) == 0:
            raise ValueError("calibration has no batches")


@dataclass
class Context:
    """What a method handler may use besides the model and its spec."""

    calibration: Calibration | None = None
    teacher: torch.nn.Module | None = None
    source: torch.nn.Module | None = None  # the uncompressed input model (read-only)
    structure_only: bool = False  # rebuilding a saved model's shapes: skip data-dependent work
    corpus: Any = None  # a DistillCorpus (methods/corpus.py): distillation reads it instead of the calibration
    deadline: float | None = None  # time.monotonic() by which distillation must end (it plans its steps to fit)
    log: Callable[[str], None] = lambda msg: None
    notes: dict[str, Any] = field(default_factory=dict)


class StopForward(Exception):
    """Raised by a hook to end a forward pass once what is needed has been captured."""


@contextmanager
def removing_hooks(handles: list | None = None) -> Iterator[list]:
    """Yields a list of hook handles (append to it freely) and removes every one on exit."""
    handles = [] if handles is None else handles
    try:
        yield handles
    finally:
        for h in handles:
            h.remove()


def forward_until_stop(model: torch.nn.Module, inputs: Batch) -> None:
    """model(**inputs), ended early, without error, where a hook raises StopForward."""
    try:
        model(**inputs)
    except StopForward:
        pass
