"""Everything a study needs loaded once: model, tokenizer, task, data, inputs; and the three
things done to every candidate: build it from a plan, score its quality, time it."""

from __future__ import annotations

from functools import cached_property

import torch
from slimformer.methods import Plan, apply_plan, get_adapter, model_size, plan_needs_calibration

from ..config import StudyConfig
from ..devices.latency import device_facts, measure_latency
from ..devices.registry import check_runtime, get_runtime
from ..errors import UserError
from .data import is_builtin_source, load_rows
from .models import load_model, load_preprocessor
from .tasks import get_task

__all__ = ["Workbench", "study_rows"]


def study_rows(cfg: StudyConfig, which: str, limit: int | None = None):
    """The rows of data.<which> (validation, calibration or test) with the task's fields."""
    d = cfg.data
    value = getattr(d, which)
    path = value if is_builtin_source(value) else cfg.resolve_path(value)
    if path is None:
        raise UserError(f"data.{which} is not set in the study file")
    columns = d.calibration_columns if which == "calibration" and d.calibration_columns is not None else d.columns
    return load_rows(path, cfg.task.type, fmt=d.format, header=d.header, names=d.names, columns=columns, limit=limit)


class Workbench:
    def __init__(self, cfg: StudyConfig, log=print):
        self.cfg = cfg
        self.log = log
        check_runtime(cfg.device.runtime)  # unknown or not installed: one clear line before any loading
        torch.set_num_threads(cfg.device.threads)
        self.tokenizer = load_preprocessor(cfg.model.name, cfg.task.type)  # an image processor for images
        self.task = get_task(cfg.task.type, self.tokenizer, cfg.task.max_length, cfg.data.batch_size)
        self.model = load_model(cfg.model.name, self.task.model_class)
        self.inputs = self.task.example_inputs(self.model, cfg.device.batch_size, cfg.device.seq_len)

    # ----- data -------------------------------------------------------------------------
    def _rows(self, which: str, limit: int | None):
        return study_rows(self.cfg, which, limit)

    @cached_property
    def validation(self) -> list[dict]:
        """The validation rows used during search (data.validation_size of them)."""
        return self.task.prepare(self._rows("validation", self.cfg.data.validation_size))

    @cached_property
    def full_validation(self) -> list[dict]:
        if self.cfg.data.validation_size is None:
            return self.validation
        return self.task.prepare(self._rows("validation", None))

    @cached_property
    def test(self) -> list[dict] | None:
        """data.test in full (None when not set): scored only by report and finish."""
        return None if self.cfg.data.test is None else self.task.prepare(self._rows("test", None))

    def test_quality(self, model) -> float | None:
        if self.test is None:
            return None
        with torch.inference_mode():
            return self.task.quality(model, self.test)["quality"]

    @cached_property
    def calibration(self):
        if self.cfg.data.calibration is None:
            return None
        return self.task.calibration(self.task.prepare(self._rows("calibration", self.cfg.data.calibration_size)))

    # ----- candidates ---------------------------------------------------------------------
    def build(self, plan: Plan, log=None, structure_only: bool = False, corpus=None, deadline: float | None = None):
        """The compressed model; `structure_only` skips data-dependent work (same shapes and kernels);
        `corpus` and `deadline`: distillation on a DistillCorpus, cut to end by then (see apply_plan)."""
        if structure_only:
            return apply_plan(self.model, plan, None, structure_only=True, log=log)
        needs_data = plan_needs_calibration(plan, get_adapter(self.model).shape())
        if needs_data and self.calibration is None:
            raise UserError("this plan needs calibration data (fisher importance, mask tuning, distillation, "
                            "gptq or smoothing): set data.calibration")
        return apply_plan(self.model, plan, self.calibration if needs_data else None, log=log, corpus=corpus,
                          deadline=deadline)

    def runner(self, model, runtime: str | None = None):
        """A zero-argument callable running `model` on `self.inputs` in `runtime` (default the study's)."""
        return get_runtime(runtime or self.cfg.device.runtime).runner(model, self.inputs, self.cfg.device.threads)

    @cached_property
    def _baseline_runner(self):
        return self.runner(self.model)  # built once: an ONNX export or a compile is not free

    def quality(self, model, full: bool = False) -> dict:
        with torch.inference_mode():
            return self.task.quality(model, self.full_validation if full else self.validation)

    def latency(self, models: dict[str, torch.nn.Module], rounds: int | None = None) -> dict:
        """Interleaved timing of the named models against the uncompressed baseline."""
        return self.latency_of({name: self.runner(m) for name, m in models.items()}, rounds)

    def latency_of(self, runners: dict, rounds: int | None = None) -> dict:
        """Interleaved timing of zero-argument callables against the uncompressed baseline."""
        d = self.cfg.device
        return measure_latency({"baseline": self._baseline_runner, **runners}, baseline="baseline",
                               rounds=rounds or d.rounds, warmup=d.warmup, threads=d.threads)

    def paired_rounds(self, models: dict[str, torch.nn.Module]):
        """A function timing n more interleaved rounds of the baseline and the named models (their
        runners are built once; the first call warms up); returns each one's per-round ms."""
        d = self.cfg.device
        runners = {"baseline": self._baseline_runner}
        runners.update({name: self.runner(m) for name, m in models.items()})
        calls = [0]

        def more(n: int) -> dict[str, list[float]]:
            lat = measure_latency(runners, baseline="baseline", rounds=n, warmup=0 if calls[0] else d.warmup,
                                  threads=d.threads)
            calls[0] += 1
            return {name: res.samples_ms for name, res in lat.items()}

        return more

    def facts(self) -> dict:
        d = self.cfg.device
        facts = {**device_facts(d.threads, d.runtime), "batch_size": d.batch_size, "seq_len": d.seq_len}
        if d.runtime != "eager":
            facts.update(self.eager_reference)
        return facts

    @cached_property
    def eager_reference(self) -> dict:
        """The uncompressed model in eager PyTorch vs in this runtime, timed in the same rounds: what
        the runtime itself buys (recorded with the device facts of a study)."""
        d = self.cfg.device
        lat = measure_latency({"runtime": self._baseline_runner, "eager": self.runner(self.model, "eager")},
                              baseline="eager", rounds=max(6, d.rounds // 2), warmup=d.warmup, threads=d.threads)
        return {"eager_baseline_latency_ms": lat["eager"].median_ms,
                "runtime_baseline_latency_ms": lat["runtime"].median_ms,
                "runtime_speedup_over_eager": lat["runtime"].speedup}

    def score(self, model, plan: Plan | None = None, full: bool = False, rounds: int | None = None) -> dict:
        """quality, latency (median/spread), speedup vs the baseline, params and size."""
        q = self.quality(model, full)
        lat = self.latency({"candidate": model}, rounds)
        size = model_size(model, plan.group_size if plan else 64)
        return {
            **q,
            "latency_ms": lat["candidate"].median_ms,
            "latency_p10_ms": lat["candidate"].p10_ms,
            "latency_p90_ms": lat["candidate"].p90_ms,
            "baseline_latency_ms": lat["baseline"].median_ms,
            "speedup": lat["candidate"].speedup,
            "params": size["params"],
            "size_mb": size["size_mb"],
            "simulated": size["simulated"],
            "runtime": self.cfg.device.runtime,
        }
