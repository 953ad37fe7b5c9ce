"""Everything a study needs loaded once: model, tokenizer, task, data, inputs; and the three
things done to every candidate: build it from a plan, score its quality, time it."""

from __future__ import annotations

from contextlib import contextmanager
from functools import cached_property

import torch
from slimformer.methods import Plan, ResolvedPlan, apply_plan, get_adapter, model_size, resolve_plan
from slimformer.methods.plan import ATTENTION_IMPLEMENTATIONS
from slimformer.methods.surgery import set_attention

from ..config import StudyConfig
from ..devices.attention import fastest_attention
from ..devices.generate import Generation, per_token
from ..devices.latency import device_facts, fixed_threads, measure_latency
from ..devices.registry import (
    check_runtime,
    fastest,
    get_runtime,
    kept_bits,
    runtimes_for_plan,
    study_formats,
)
from ..devices.timelock import lock_path, timing_lock
from ..errors import UserError
from . import decoding
from .data import is_builtin_source, load_rows
from .models import load_model, load_preprocessor
from .tasks import get_task

__all__ = ["Workbench", "study_rows", "BASELINE_RUNTIME"]

# static int8 calibrates activation scales on this many calibration examples (NNCF's and ONNX Runtime's
# MinMax statistics settle within a few dozen sentences; each one is a forward pass of the float model)
CALIBRATION_INPUTS = 64
BASELINE_RUNTIME = "eager"  # the one baseline is stock float32 PyTorch, whatever runtime candidates run in


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
    def __init__(self, cfg: StudyConfig, log=print, runtimes: tuple[str, ...] | None = None):
        self.cfg = cfg
        self.log = log
        # the study's runtime set, decided once (devices/registry.py; `runtimes`: already decided by the caller);
        # unknown or not installed: one line before any loading
        self.runtimes = check_runtime(cfg.device.runtime) if runtimes is None else tuple(runtimes)
        if cfg.device.generate is not None:  # decoders: the runtimes with a KV-cache loop (problem/decoding.py)
            self.runtimes = decoding.decoder_runtimes(self.runtimes)
        self.decoding: tuple | None = None  # decoders: (the last candidate, its runners by runtime)
        self.attention: str | None = None  # the baseline's attention implementation, once chosen or adopted
        self.attention_ms: dict[str, float] = {}
        # building and scoring at a worker's share of the threads (search.worker_threads, set by the
        # workers and Ray backends); every latency measurement at device.threads (`timing`)
        torch.set_num_threads(cfg.search.worker_threads or cfg.device.threads)
        self.timing_threads: int | None = None  # the torch threads of the last latency measurement
        self.tokenizer = load_preprocessor(cfg.model.name, cfg.task.type)  # an image processor for images
        self.task = get_task(cfg.task.type, self.tokenizer, cfg.task.max_length, cfg.data.batch_size, cfg.task.stride)
        self.model = load_model(cfg.model.name, self.task.model_class)
        self.generate = cfg.device.generate  # decoders: latency is decode ms per token (devices/generate.py)
        if self.generate is None:
            self.inputs = self.task.example_inputs(self.model, cfg.device.batch_size, cfg.device.seq_len)
        else:  # the 1 x P prompt (batch_size and seq_len do not apply)
            self.inputs = {"input_ids": self.task.generation_prompt(self.model, self.generate.prompt_tokens,
                                                                     self.generate.new_tokens)}

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

    def lm_test_scores(self, model) -> dict | None:
        """causal-lm: perplexity, KL and top-1 agreement against the original on data.test (never selected on)."""
        if self.test is None:
            return None
        return self.task.quality(model, self.test, reference=self.model)

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
    @cached_property
    def shape(self):
        """The model's shape (its adapter looked up once)."""
        return get_adapter(self.model).shape()

    def resolve(self, plan: Plan | ResolvedPlan) -> ResolvedPlan:
        """`plan` resolved against the study's model (a ResolvedPlan as it is): a trial resolves its plan
        once and hands the resolution to build, runners_for and refusals."""
        return resolve_plan(plan, self.shape)

    def build(self, plan: Plan | ResolvedPlan, log=None, structure_only: bool = False, corpus=None,
              deadline: float | None = None):
        """The compressed model; `structure_only` skips data-dependent work (same shapes and kernels);
        `corpus` and `deadline`: distillation on a DistillCorpus, cut to end by then (see apply_plan)."""
        self.choose_attention()  # candidates use the baseline's attention implementation, or their plan's
        work = self.resolve(plan)
        if structure_only:
            return apply_plan(self.model, work, None, structure_only=True, log=log)
        if work.needs_calibration and self.calibration is None:
            raise UserError("this plan needs calibration data (fisher importance, mask tuning, distillation, "
                            "gptq or smoothing): set data.calibration")
        return apply_plan(self.model, work, self.calibration if work.needs_calibration else None, log=log,
                          corpus=corpus, deadline=deadline)

    def runner(self, model, runtime: str | None = None):
        """A zero-argument callable running `model` on `self.inputs` in `runtime` (default: the study's
        runtime, or its first with `device.runtime: auto`); with device.generate its greedy decode."""
        if self.generate is not None:  # one runner per model and runtime (its prefill and artifact reused)
            runtime = runtime or self.runtimes[0]
            if self.decoding is None or self.decoding[0] is not model:
                self.decoding = (model, {})
            if runtime not in self.decoding[1]:
                self.decoding[1][runtime] = decoding.decode_runner(self, model, runtime)
            return self.decoding[1][runtime]
        return get_runtime(runtime or self.runtimes[0]).runner(model, self.inputs, self.cfg.device.threads,
                                                               self.runtime_options())

    def runtime_options(self) -> dict:
        """What a runtime's build reads from the study: the calibration inputs of static int8."""
        return {"calibration": self.calibration_inputs}

    @cached_property
    def calibration_inputs(self) -> list[dict]:
        """What a runtime calibrates static int8 activations on: CALIBRATION_INPUTS examples."""
        return self.calibration_examples(CALIBRATION_INPUTS)

    def calibration_examples(self, limit: int) -> list[dict]:
        """Up to `limit` calibration examples as single-row {input name: numpy} dicts, padding trimmed ([]
        without data.calibration)."""
        out: list[dict] = []
        if self.calibration is None:
            return out
        for batch in self.calibration.batches:
            for inputs in self.calibration.model_inputs(batch):
                tensors = {k: v for k, v in inputs.items() if torch.is_tensor(v)}
                mask = tensors.get("attention_mask")
                for i in range(next(iter(tensors.values())).shape[0]):
                    n = int(mask[i].sum()) if mask is not None else None
                    out.append({k: (v[i:i + 1, :n] if n and v.dim() == 2 else v[i:i + 1]).numpy()
                                for k, v in tensors.items()})
                    if len(out) == limit:
                        return out
        return out

    def runners_for(self, model, plan: Plan | ResolvedPlan | None) -> dict:
        """runtime -> `model`'s runner in it, for each of the study's runtimes that can run `plan`."""
        return {rt: self.runner(model, rt) for rt in self.runtimes_for(plan)}

    def as_run(self, model, runner):
        """What to score so that quality is that of the artifact a runner times: for ONNX Runtime and
        OpenVINO its session, called like the PyTorch model; the PyTorch model itself otherwise."""
        from ..devices.artifacts import ArtifactModel

        if self.generate is not None:
            return decoding.scored_model(model, runner)
        session = getattr(runner, "session", None)
        return model if session is None else ArtifactModel(session, model.config)

    def deployed(self, model, runtime: str | None):
        """`model` as `runtime` runs it (built afresh), for scoring; see `as_run`."""
        if runtime is None or get_runtime(runtime).build is None:
            return model
        return self.as_run(model, self.runner(model, runtime))

    def as_scored(self, plan: dict, runtime: str | None):
        """A trial's model as the search scored it: its stored plan rebuilt, run as `runtime` runs it."""
        return self.deployed(self.build(Plan.from_dict(plan)), runtime)

    def runtimes_for(self, plan: Plan | ResolvedPlan | None) -> tuple[str, ...]:
        """The study's runtimes that can run `plan` as built (all of them without a plan)."""
        if plan is None:
            return self.runtimes
        resolved = self.resolve(plan).plan
        found = runtimes_for_plan(self.runtimes, resolved)
        if self.generate is not None:  # decoders: eager and OpenVINO's LLM, which has no 3- or 2-bit kernel
            bits = kept_bits(resolved)
            found = tuple(rt for rt in found if not (rt == "openvino" and decoding.openvino_refusal(bits)))
        return found

    def refusals(self, plan: Plan | ResolvedPlan) -> str:
        """Why each of the study's runtimes cannot run `plan` on this CPU (one line)."""
        resolved = self.resolve(plan).plan
        bits = kept_bits(resolved)
        return "; ".join(get_runtime(n).plan_refusal(bits, resolved.int8_scheme)
                         or (self.generate is not None and n == "openvino" and decoding.openvino_refusal(bits))
                         or f"{n} can" for n in self.runtimes)

    # ----- the one baseline ---------------------------------------------------------------
    def adopt(self, baseline: dict | None) -> None:
        """Use the attention implementation a study's stored baseline chose, instead of timing it again
        (every worker of a study then times against the same baseline; the stored choice wins)."""
        stored = (baseline or {}).get("attention")
        if stored in ATTENTION_IMPLEMENTATIONS and stored != self.attention:  # "default": nothing to switch
            self._use_attention(stored, baseline.get("attention_ms", {}))

    def choose_attention(self) -> str | None:
        """The faster stock attention implementation of the float32 model on this device (timed once,
        interleaved), adopted for the baseline and every candidate built from now on."""
        if self.attention is None:
            d = self.cfg.device
            with self.timing():
                name, ms = fastest_attention(self.model, self.inputs, d.threads, max(d.rounds, 10), d.warmup)
            self._use_attention(name, ms)
        return self.attention

    def _use_attention(self, name: str | None, ms: dict) -> None:
        if name is not None and not set_attention(self.model, name):
            raise UserError(f"the study's baseline used attention implementation {name!r}, which this model "
                            "cannot use here")
        self.attention, self.attention_ms = name or "default", dict(ms)

    def baseline_facts(self) -> dict:
        """What the baseline is: stored with the study's baseline."""
        self.choose_attention()
        facts = {"attention": self.attention, "attention_ms": self.attention_ms, "baseline_runtime": BASELINE_RUNTIME}
        return facts if self.generate is None else {**facts, **self.generate_facts}

    @cached_property
    def generate_facts(self) -> dict:
        """Decoders: what `latency_ms` is (decode ms per generated token) and the original's prefill ms."""
        d = self.cfg.device
        with self.timing():
            lat = measure_latency({"prefill": Generation(self.model, self.inputs["input_ids"], 1).prefill},
                                  rounds=d.rounds, warmup=d.warmup, threads=d.threads)["prefill"]
        return {"latency_phase": "decode", "latency_unit": "ms per generated token",
                "prompt_tokens": self.generate.prompt_tokens, "new_tokens": self.generate.new_tokens,
                "prefill_ms": lat.median_ms}

    def phase_figures(self, model, decode_ms=None, runtime: str | None = None) -> dict:
        """Decoders (device.generate): `model`'s prefill in the runtime it was timed in (`decode_ms` a
        SpeedupEstimate names it) against the original's, and its decode tokens per second
        (problem/decoding.py); {} otherwise."""
        if self.generate is None:
            return {}
        runtime = getattr(decode_ms, "runtime", None) or runtime
        return decoding.phase_figures(self, self.runner(model, runtime), decode_ms)

    @cached_property
    def baseline_runner(self):
        self.choose_attention()
        if self.generate is not None:
            return decoding.decode_runner(self, self.model, BASELINE_RUNTIME)
        return get_runtime(BASELINE_RUNTIME).runner(self.model, self.inputs, self.cfg.device.threads)

    def quality(self, model, full: bool = False) -> dict:
        with torch.inference_mode():
            return self.task.quality(model, self.full_validation if full else self.validation)

    def latency(self, models: dict[str, torch.nn.Module], rounds: int | None = None,
                runtimes: dict[str, str] | None = None) -> dict:
        """Interleaved timing of the named models against the one baseline (`runtimes`: name -> the
        runtime it runs in, default the study's)."""
        runtimes = runtimes or {}
        return self.latency_of({name: self.runner(m, runtimes.get(name)) for name, m in models.items()}, rounds)

    def latency_in(self, model, runtimes, rounds: int | None = None) -> dict:
        """Interleaved timing of one model in each of `runtimes` against the one baseline, keyed by runtime."""
        return self.latency({rt: model for rt in runtimes}, rounds, runtimes={rt: rt for rt in runtimes})

    def latency_of(self, runners: dict, rounds: int | None = None) -> dict:
        """Interleaved timing of zero-argument callables against the one baseline."""
        d = self.cfg.device
        runners = {"baseline": self.baseline_runner, **runners}
        with self.timing():
            lat = measure_latency(runners, baseline="baseline", rounds=rounds or d.rounds, warmup=d.warmup,
                                  threads=d.threads)
        return lat if self.generate is None else per_token(lat, self.generate.new_tokens)

    def paired_rounds(self, models: dict[str, torch.nn.Module], runtimes: dict[str, str] | None = None):
        """A function timing n more interleaved rounds of the baseline and the named models (their
        runners are built once; the first call warms up); returns each one's per-round ms."""
        runtimes = runtimes or {}
        return self.paired_runners({name: self.runner(m, runtimes.get(name)) for name, m in models.items()})

    def paired_runners(self, runners: dict):
        """As `paired_rounds`, for runners already built (zero-argument callables)."""
        d = self.cfg.device
        runners = {"baseline": self.baseline_runner, **runners}
        calls = [0]

        def more(n: int) -> dict[str, list[float]]:
            with self.timing():
                lat = measure_latency(runners, baseline="baseline", rounds=n, warmup=0 if calls[0] else d.warmup,
                                      threads=d.threads)
            lat = lat if self.generate is None else per_token(lat, self.generate.new_tokens)
            calls[0] += 1
            return {name: res.samples_ms for name, res in lat.items()}

        return more

    @property
    def timelock(self):
        """This process's hold on the host's timing lock of the study's folder (searcher/devices/timelock.py)."""
        return timing_lock(lock_path(self.cfg.path.parent if self.cfg.path else None))

    @property
    def timing_wait_s(self) -> float:
        """The seconds this process has waited for the timing lock, all told."""
        return self.timelock.waited_s

    def working(self):
        """A trial's work (build, score): beside other work of the study on this host, never beside a measurement."""
        return self.timelock.working()

    @contextmanager
    def timing(self):
        """A latency measurement: the host's timing lock held (no other measurement or work of the study
        on this host) and device.threads torch threads, whatever a worker's share is; nested: a no-op."""
        with self.timelock.timing(), fixed_threads(self.cfg.device.threads):
            self.timing_threads = torch.get_num_threads()
            yield

    def facts(self) -> dict:
        d = self.cfg.device
        formats = study_formats(self.runtimes)
        if self.generate is not None:
            formats = decoding.decoder_formats(formats, self.runtimes)
        facts = {**device_facts(d.threads, d.runtime), "batch_size": d.batch_size, "seq_len": d.seq_len,
                 "formats": formats, **self.baseline_facts()}
        if self.runtimes != (BASELINE_RUNTIME,):
            facts["uncompressed"] = self.uncompressed_speedups
        return facts

    @cached_property
    def uncompressed_speedups(self) -> dict:
        """The uncompressed model in each of the study's runtimes against the baseline, timed in the
        same rounds: what a runtime alone buys (recorded with the device facts of a study)."""
        d = self.cfg.device
        lat = self.latency_in(self.model, self.runtimes, rounds=max(6, d.rounds // 2))
        return {rt: {"latency_ms": lat[rt].median_ms, "speedup": lat[rt].speedup} for rt in self.runtimes}

    def score(self, model, plan: Plan | None = None, full: bool = False, rounds: int | None = None) -> dict:
        """quality, latency (median/spread), speedup vs the baseline, params and size."""
        q = self.quality(model, full)
        runtimes = self.runtimes_for(plan)
        lat = self.latency_in(model, runtimes, rounds)
        best = fastest({rt: lat[rt].speedup for rt in runtimes})  # with device.runtime auto: the fastest counts
        size = model_size(model, plan.group_size if plan else 64)
        return {
            **q,
            "latency_ms": lat[best].median_ms,
            "latency_p10_ms": lat[best].p10_ms,
            "latency_p90_ms": lat[best].p90_ms,
            "baseline_latency_ms": lat["baseline"].median_ms,
            "speedup": lat[best].speedup,
            "params": size["params"],
            "size_mb": size["size_mb"],
            "simulated": size["simulated"],
            "runtime": best,
            "runtime_speedups": {rt: lat[rt].speedup for rt in runtimes},
            **self.phase_figures(model, lat[best].median_ms, best),
        }
