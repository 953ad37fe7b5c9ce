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
import statistics
import time
from dataclasses import replace

from slimformer.methods import Plan, model_size

from ..config import StudyConfig
from ..devices.adaptive import SpeedupEstimate, adaptive_speedup
from ..devices.registry import fastest
from .budget import Budget
from .records import LATENCY_SOURCE, TIMING_THREADS, TIMING_WAIT_S, TrialRecord, write_trial

__all__ = ["MAX_REJECTIONS_IN_A_ROW", "TrialFailed", "Rejected", "propose", "evaluate", "predicted", "record",
           "time_candidate", "runtime_latencies"]


class TrialFailed(Exception):
    """The candidate was built but cannot be scored (e.g. it diverged)."""


MAX_REJECTIONS_IN_A_ROW = 50  # then measure anyway: the sampler must keep learning


class Rejected(Exception):
    """The cost model says the candidate is clearly over the latency budget."""


def time_candidate(bench, model, baseline: dict, runtimes: tuple[str, ...] | None = None,
                   runners: dict | None = None) -> SpeedupEstimate:
    """Adaptive timing of `model` against the one baseline on the study's device (devices/adaptive.py),
    held to the budget's target: the first estimate uses device.rounds, then step = max(5, rounds // 2)
    more while undecided, up to device.max_rounds (never fewer than device.rounds).

    With several `runtimes` (device.runtime auto) the candidate runs in each of them in the same
    first rounds; the fastest (highest median paired ratio) counts and only it is timed further.
    Choosing the best of a few noisy estimates flatters it slightly: the further rounds are unbiased,
    and the search's final re-timing measures the chosen runtime afresh. `runners` (runtime -> the
    candidate's runner in it, built by the caller to score the same artifact) replace building them."""
    cfg = bench.cfg
    d = cfg.device
    runtimes = tuple(runners or runtimes or bench.runtimes)
    runners = runners or {rt: bench.runner(model, rt) for rt in runtimes}
    timer = bench.paired_runners(runners)
    first = timer(d.rounds)
    ratios = {rt: float(statistics.median(b / c for b, c in zip(first["baseline"], first[rt]))) for rt in runtimes}
    best = fastest(ratios)
    if len(runtimes) > 1:  # the others are not timed any further
        timer = bench.paired_runners({best: runners[best]})
    pending = [(first["baseline"], first[best])]

    def more(n: int):
        if pending:
            return pending.pop()
        samples = timer(n)
        return samples["baseline"], samples[best]

    budget = Budget.from_section(cfg.budget)
    est = adaptive_speedup(more, budget.target(baseline["latency_ms"]), budget.confidence,
                           first=d.rounds, step=max(5, d.rounds // 2), cap=max(d.rounds, d.max_rounds))
    return replace(est, runtime=best, runtime_speedups=ratios if len(runtimes) > 1 else None)


def propose(trial, cfg: StudyConfig, space, baseline: dict, predictor=None, may_reject: bool = False) -> Plan:
    """Sample the trial's plan; raise `Rejected` when the cost model rules it out."""
    plan = space.sample(trial)
    write_trial(trial, plan=plan.to_dict())
    if predictor is not None:  # a cost.screen.StudyPredictor: one calibrated predictor per runtime
        pred = predictor.predict(plan)
        write_trial(trial, predicted_latency_ms=pred["latency_ms"])  # in the fastest predicted runtime
        if len(pred["by_runtime"]) > 1:
            write_trial(trial, predicted_runtime_ms=pred["by_runtime"])
        limit = Budget.from_section(cfg.budget).latency_limit(baseline["latency_ms"])
        queued = TrialRecord.of(trial)
        anchored = queued.seeded or queued.retry_of is not None  # always measured
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
        work = bench.resolve(plan)  # the plan resolved once, that resolution handed on
        model = bench.build(work, structure_only=quality is not None)
        t1 = time.perf_counter()
        runners = bench.runners_for(model, work)
        if not runners:  # e.g. static int8 (not in PyTorch) beside bf16 layers (not in ONNX Runtime)
            raise TrialFailed(f"no runtime of the study runs this plan on this CPU: {bench.refusals(work)}")
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
    cons = Budget.from_section(cfg.budget).constraints(baseline["quality"], result["quality"],
                                                       baseline["latency_ms"] / held, held, result["size_mb"], prefill)
    for key, value in cons.items():
        trial.set_constraint(key, value)
    write_trial(trial, constraints=cons, **result, feasible=all(v <= 0 for v in cons.values()))
    if predictor is not None and result.get(LATENCY_SOURCE) == "measured":  # calibrate online, each runtime
        predictor.observe(plan, runtime_latencies(result, baseline["latency_ms"]))
    values = {"quality": result["quality"], "latency": result["latency_ms"], "size": result["size_mb"]}
    return [values[o] for o in cfg.search.objectives]
