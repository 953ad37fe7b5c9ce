"""One trial in three steps, so that every driver (the local loop, isolated worker processes,
parallel workers, Ray) runs candidates the same way:

1. `propose`  (needs the Optuna trial): sample a plan, and reject it early when the cost model
   says it is clearly over the latency budget;
2. `evaluate` (needs only the plan): build, score and time the candidate; returns plain data
   that can cross a process boundary;
3. `record`   (needs the Optuna trial): budget constraints, user attributes, objective values.
"""

from __future__ import annotations

import math
import time

from slimformer.methods import Plan, model_size

from ..config import StudyConfig
from ..devices.adaptive import speedup_target, time_candidate
from .records import (
    CONSTRAINTS,
    LATENCY_SOURCE,
    PREDICTED_BY_RUNTIME,
    RETRY_OF,
    SEEDED,
    TIMING_THREADS,
    TIMING_WAIT_S,
)

__all__ = ["MAX_REJECTIONS_IN_A_ROW", "TrialFailed", "Rejected", "propose", "evaluate", "predicted", "record", "constraints_of", "latency_limit",
           "runtime_latencies"]


class TrialFailed(Exception):
    """The candidate was built but cannot be scored (e.g. it diverged)."""


MAX_REJECTIONS_IN_A_ROW = 50  # then measure anyway: the sampler must keep learning


class Rejected(Exception):
    """The cost model says the candidate is clearly over the latency budget."""


def constraints_of(cfg: StudyConfig, baseline_quality: float, quality: float, latency_ms: float,
                   speedup: float, size_mb: float, prefill_speedup: float | None = None) -> dict[str, float]:
    """Optuna constraint values: <= 0 means the budget is met. With device.generate `speedup` is the decode
    speedup and `prefill_speedup` the prefill's (docs/decoders.md)."""
    b = cfg.budget
    out = {}
    if b.speedup is not None:
        out["speedup"] = b.speedup - speedup
    if b.decode_speedup is not None:
        out["decode_speedup"] = b.decode_speedup - speedup
    if b.prefill_speedup is not None:
        out["prefill_speedup"] = b.prefill_speedup - (prefill_speedup if prefill_speedup is not None else 0.0)
    if b.latency_ms is not None:
        out["latency_ms"] = latency_ms - b.latency_ms
    if b.max_quality_drop is not None:
        out["quality_drop"] = (baseline_quality - quality) - b.max_quality_drop
    if b.size_mb is not None:
        out["size_mb"] = size_mb - b.size_mb
    return out


def latency_limit(cfg: StudyConfig, baseline: dict) -> float | None:
    """The latency a candidate must beat: the baseline over the budget's speedup target (the one
    budget arithmetic, `devices.adaptive.speedup_target`); None without a latency budget."""
    target = speedup_target(cfg.budget, baseline["latency_ms"])
    return None if target is None else baseline["latency_ms"] / target


def propose(trial, cfg: StudyConfig, space, baseline: dict, predictor=None, may_reject: bool = False) -> Plan:
    """Sample the trial's plan; raise `Rejected` when the cost model rules it out."""
    plan = space.sample(trial)
    trial.set_user_attr("plan", plan.to_dict())
    if predictor is not None:  # a cost.screen.StudyPredictor: one calibrated predictor per runtime
        pred = predictor.predict(plan)
        trial.set_user_attr("predicted_latency_ms", pred["latency_ms"])  # in the fastest predicted runtime
        if len(pred["by_runtime"]) > 1:
            trial.set_user_attr(PREDICTED_BY_RUNTIME, pred["by_runtime"])
        limit = latency_limit(cfg, baseline)
        anchored = trial.user_attrs.get(SEEDED) or RETRY_OF in trial.user_attrs  # always measured
        if may_reject and not anchored and limit is not None:
            reason = predictor.rejection(plan, limit)  # only when even the fastest runtime is clearly over
            if reason:
                raise Rejected(reason)
    return plan


def runtime_latencies(attrs: dict, baseline_ms: float) -> dict:
    """Each runtime's measured latency (ms) of a trial: the counted runtime's `latency_ms`, and under
    `device.runtime: auto` the others' from their first estimate (`runtime_speedups`)."""
    out = {rt: baseline_ms / s for rt, s in (attrs.get("runtime_speedups") or {}).items() if s and s > 0}
    out[attrs.get("runtime")] = attrs["latency_ms"]
    return out


def evaluate(bench, plan: Plan, baseline: dict, quality: float | None = None) -> dict:
    """Build, score and time one candidate. Returns plain data (picklable, JSON-able).

    With `quality` given (a result transferred from another device) only the structure is
    built (no data-dependent work: the weights' values do not change the timing) and timed.

    The work runs beside other trials' work on this host; the timing holds the host's timing lock, at
    device.threads (`Workbench.working` / `timing`, searcher/devices/timelock.py)."""
    bench.adopt(baseline)  # the study's attention choice for the baseline and the candidates
    waited = bench.timing_wait_s
    with bench.working():
        t0 = time.perf_counter()
        model = bench.build(plan, structure_only=quality is not None)
        t1 = time.perf_counter()
        runners = bench.runners_for(model, plan)
        if not runners:  # e.g. static int8 (not in PyTorch) beside bf16 layers (not in ONNX Runtime)
            raise TrialFailed(f"no runtime of the study runs this plan on this CPU: {bench.refusals(plan)}")
        with bench.timing():  # first and further rounds in one turn of the lock
            est = time_candidate(bench, model, baseline, runners=runners)  # adaptive rounds, with the interval
            phases = bench.phase_figures(model, est)  # decoders (device.generate): which phase, and the prefill
        # quality of what the fastest runtime runs: its ONNX Runtime / OpenVINO artifact, as export hands it over
        q = bench.quality(bench.as_run(model, runners[est.runtime]))["quality"] if quality is None else quality
    if not math.isfinite(q):
        raise TrialFailed("quality is not a finite number (the compressed model diverged)")
    t2 = time.perf_counter()
    size = model_size(model, plan.group_size)
    return {
        "quality": q,
        "latency_ms": baseline["latency_ms"] / est.speedup,  # drift-free: study baseline over paired ratio
        "latency_raw_ms": est.candidate_ms,
        "latency_spread_ms": est.spread_ms,
        "speedup": est.speedup, **est.attrs(), "size_mb": size["size_mb"], "params": size["params"],
        "simulated": size["simulated"], "build_s": t1 - t0, "eval_s": t2 - t1, LATENCY_SOURCE: "measured",
        "runtime": est.runtime,  # quality was scored in it; export writes its artifact format by default
        TIMING_WAIT_S: round(bench.timing_wait_s - waited, 3), TIMING_THREADS: bench.timing_threads,
        **({"runtime_speedups": est.runtime_speedups} if est.runtime_speedups else {}), **phases,
    }


def predicted(predictor, plan: Plan, baseline: dict, quality: float) -> dict:
    """A transferred plan's result with latency and size from this device's cost model (no build)."""
    from slimformer.methods.plan import SIMULATED_BITS

    pred = predictor.predict(plan)
    resolved = plan.resolve(predictor.facts.shape)
    return {
        "quality": quality, "latency_ms": pred["latency_ms"], "latency_raw_ms": pred["latency_ms"],
        "latency_spread_ms": None, "speedup": baseline["latency_ms"] / pred["latency_ms"],
        "size_mb": pred["size_mb"], "params": pred["params"],
        "simulated": any(resolved.bits[i] in SIMULATED_BITS for i in resolved.layers),
        "build_s": 0.0, "eval_s": 0.0, LATENCY_SOURCE: "predicted", "runtime": pred["runtime"],
    }


def record(trial, cfg: StudyConfig, baseline: dict, plan: Plan, result: dict, predictor=None) -> list[float]:
    """Store constraints and measurements on the trial; return the objective values."""
    held = result.get("speedup_low") or result["speedup"]  # the budget must hold at budget.confidence
    prefill = result.get("prefill_speedup_low") or result.get("prefill_speedup")  # decoders: at confidence too
    cons = constraints_of(cfg, baseline["quality"], result["quality"], baseline["latency_ms"] / held,
                          held, result["size_mb"], prefill)
    for key, value in cons.items():
        trial.set_constraint(key, value)
    trial.set_user_attr(CONSTRAINTS, cons)
    for k, v in {**result, "feasible": all(v <= 0 for v in cons.values())}.items():
        trial.set_user_attr(k, v)
    if predictor is not None and result.get(LATENCY_SOURCE) == "measured":  # calibrate online, each runtime
        predictor.observe(plan, runtime_latencies(result, baseline["latency_ms"]))
    values = {"quality": result["quality"], "latency": result["latency_ms"], "size": result["size_mb"]}
    return [values[o] for o in cfg.search.objectives]
