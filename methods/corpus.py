"""A distillation corpus: many single inputs, shuffled every epoch, batched by similar length,
with the teacher's outputs cached per example when they are small and computed batch by batch
when they are not.

Order: each epoch draws a fresh permutation of the examples (numpy's default_rng([seed,
epoch])), cuts it into pools of `pool` batches, sorts each pool by length and cuts it into
batches (little padding), then shuffles the batches: every epoch sees other batch mates in
another order, while a batch still holds texts of similar length (the "sortish" sampler of
fairseq and AllenNLP's bucket iterator).

Teacher outputs: sequence-level targets (the pooled embedding, a classifier's logits) are
N x D floats, cached per example the first time an example is seen (in memory, or in a file
on disk above `memory_limit_mb`); token-level targets (hidden states, attention maps, a
language model's per-token logits) would take N x tokens x width, so the teacher is run on each
batch alongside the student instead.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .calibration import default_inputs, default_loss

__all__ = ["DistillCorpus", "CACHEABLE_LOSSES"]

CACHEABLE_LOSSES = frozenset({"embedding", "logits"})  # sequence-level targets, when they are 2-D


class _TargetStore:
    """Per-example teacher targets for sequence-level losses: N x D arrays, filled lazily."""

    def __init__(self, n: int, limit_bytes: float):
        self.n, self.limit = n, limit_bytes
        self.arrays: dict[str, np.ndarray] = {}
        self.filled = np.zeros(n, dtype=bool)
        self._dir = None
        self.on_disk = False

    def get(self, idx: list[int]) -> dict[str, torch.Tensor] | None:
        if not self.arrays or not self.filled[idx].all():
            return None
        return {k: torch.from_numpy(np.ascontiguousarray(a[idx])) for k, a in self.arrays.items()}

    def put(self, idx: list[int], targets: dict[str, torch.Tensor]) -> None:
        for key, t in targets.items():
            if key not in self.arrays:
                shape = (self.n, *t.shape[1:])
                nbytes = 4 * int(np.prod(shape))
                if nbytes > self.limit:
                    if self._dir is None:
                        self._dir = tempfile.TemporaryDirectory(prefix="slimformer-teacher-")
                    path = Path(self._dir.name) / f"{key}.f32"
                    self.arrays[key] = np.memmap(path, dtype=np.float32, mode="w+", shape=shape)
                    self.on_disk = True
                else:
                    self.arrays[key] = np.zeros(shape, dtype=np.float32)
            self.arrays[key][idx] = t.detach().float().numpy()
        self.filled[idx] = True


@dataclass
class DistillCorpus:
    """texts: the corpus inputs; make_batch(texts, labels or None) -> a model batch (padded);
    lengths: tokens per text (for batching by length); labels: optional per text.
    features / model_inputs / loss_fn: as in `Calibration` (what the embedding loss compares,
    the keyword dicts of one batch, the task loss mixed in by distill.alpha when labels exist)."""

    texts: Sequence[str]
    make_batch: Callable[[list[str], list | None], dict[str, Any]]
    lengths: Sequence[int]
    batch_size: int = 32
    labels: Sequence | None = None
    features: Callable | None = None
    model_inputs: Callable = default_inputs
    loss_fn: Callable = default_loss
    seed: int = 0
    pool: int = 50
    memory_limit_mb: float = 256.0

    def __post_init__(self) -> None:
        if len(self.texts) == 0:
            raise ValueError("the distillation corpus has no texts")
        if len(self.lengths) != len(self.texts):
            raise ValueError("lengths must give one length per text")
        self.store: _TargetStore | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The batches (lists of example indices) of one epoch: shuffled, by similar length."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.texts)).tolist()
        size, pool = self.batch_size, self.batch_size * self.pool
        batches = []
        for start in range(0, len(order), pool):
            chunk = sorted(order[start:start + pool], key=lambda j: self.lengths[j])
            batches += [chunk[k:k + size] for k in range(0, len(chunk), size)]
        return [batches[i] for i in rng.permutation(len(batches)).tolist()]

    def batch(self, idx: list[int]) -> dict[str, Any]:
        labels = None if self.labels is None else [self.labels[i] for i in idx]
        return self.make_batch([self.texts[i] for i in idx], labels)

    def stream(self, teacher_outputs: Callable[[dict], list[dict]], losses) -> Iterator[tuple[dict, list[dict]]]:
        """Endless (batch, teacher targets) pairs, epoch after epoch. `teacher_outputs(batch)` runs
        the teacher on a batch (a list of target dicts, one per model input)."""
        cacheable = set(losses) <= CACHEABLE_LOSSES
        if cacheable and self.store is None:
            self.store = _TargetStore(len(self.texts), self.memory_limit_mb * 2**20)
        epoch = 0
        while True:
            for idx in self.epoch_batches(epoch):
                batch = self.batch(idx)
                cached = self.store.get(idx) if cacheable and self.store is not None else None
                if cached is not None and set(cached) >= set(losses):
                    yield batch, [cached]
                    continue
                targets = teacher_outputs(batch)
                if cacheable and len(targets) == 1 and all(t.dim() == 2 for t in targets[0].values()):
                    self.store.put(idx, targets[0])
                else:
                    cacheable = False  # token-level or multi-input targets: computed per batch from now on
                yield batch, targets
            epoch += 1
