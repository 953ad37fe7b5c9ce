"""The best is chosen on what repeats: the final re-timing of a study.

A search keeps the plans whose measurement held the budget, and among many plans near the edge
that is partly the ones whose measurement came out fast. So the search's last step (and
`report`, and `export --best` when trials finished since) times the RETIME_TOP best feasible
trials again, all of them against the uncompressed model in ONE fresh interleaved measurement of
device.max_rounds rounds, and bounds each speedup with the bootstrap of searcher/devices/adaptive.py. A
trial holds re-timed when that lower bound meets the budget at budget.confidence.

The result is stored in the study itself (study user attr RETIMED_ATTR), so every command that
reads the storage sees the same figures and a copy of a study folder carries none:

    {"candidates": [14, 9, ...], "rounds": 60, "confidence": 0.9, "target": 2.0, "baseline_ms": 21.3,
     "trials": {"14": {"speedup": 1.99, "low": 1.96, "high": 2.02, "confidence": 0.9, "rounds": 60,
                       "holds": false}, ...}}

`retimed(study)` reads it; `best_holding(study)` is the best re-timed trial that holds.
"""

from __future__ import annotations

import statistics

from ..devices.adaptive import speedup_interval
from ..errors import UserError
from ..study.budget import Budget
from ..study.records import (
    RETIMED_ATTR,
    Retimed,
    Retiming,
    StudyRecord,
    TrialRecord,
    feasible_trials,
    study_budget,
)

__all__ = ["RETIMED_ATTR", "RETIME_TOP", "Retimed", "retimed", "candidates", "is_current", "retime",
           "retime_models", "retime_rounds", "best_holding", "choose_best", "miss_warning"]

RETIME_TOP = 5            # feasible trials re-timed, best quality first


def retimed(study) -> dict[int, Retimed]:
    """The stored re-timing by trial number ({} when the study was never re-timed)."""
    return Retiming.from_dict(study.user_attrs.get(RETIMED_ATTR)).trials


def retime_rounds(cfg) -> int:
    """The rounds of a re-timing: device.max_rounds (never fewer than device.rounds)."""
    return max(cfg.device.rounds, cfg.device.max_rounds)


def retime_models(bench, models: dict, runtimes: dict, budget: Budget, baseline_ms: float) -> Retiming:
    """THE re-timing (the search's, the report's and finish's): `models` (search trial number -> model)
    against the uncompressed model in ONE fresh interleaved measurement of `retime_rounds` rounds, each
    in its runtime (`runtimes`: number -> runtime name or None), each speedup bounded by the bootstrap
    of devices/adaptive.py and judged by the budget (its target from the study's `baseline_ms`)."""
    rounds = retime_rounds(bench.cfg)
    trials: dict[int, Retimed] = {}
    measured_ms = None
    if models:
        samples = bench.paired_rounds({str(n): m for n, m in models.items()},
                                      runtimes={str(n): runtimes.get(n) for n in models})(rounds)
        base = samples["baseline"]
        measured_ms = statistics.median(base)
        for n in models:
            ratios = [b / c for b, c in zip(base, samples[str(n)])]
            low, high = speedup_interval(ratios, budget.confidence)
            trials[n] = Retimed(n, statistics.median(ratios), low, high, budget.confidence, rounds,
                                budget.holds(low, baseline_ms))
    return Retiming(list(models), rounds, budget.confidence, budget.target(baseline_ms), measured_ms, trials)


def candidates(study, k: int = RETIME_TOP) -> list:
    """The k feasible trials of highest quality (ties: lower latency)."""
    ok = sorted(feasible_trials(study), key=lambda t: (-t.values[0], TrialRecord.of(t).latency_ms or 0))
    return ok[:k]


def is_current(study, k: int = RETIME_TOP) -> bool:
    """Whether the stored re-timing covers the study's k best feasible trials as they are now."""
    rec = study.user_attrs.get(RETIMED_ATTR)
    return rec is not None and sorted(rec.get("candidates", [])) == sorted(t.number for t in candidates(study, k))


def retime(study, bench, log=print, k: int = RETIME_TOP) -> dict[int, Retimed]:
    """Time the k best feasible trials against the uncompressed model in one fresh interleaved
    measurement (structure-only builds: the same shapes and kernels), store and return it."""
    from slimformer.methods import Plan

    from ..study.storage import storage_fault

    chosen = {t.number: TrialRecord.of(t) for t in candidates(study, k)}
    baseline = StudyRecord.of(study).baseline
    models = {}
    if chosen:
        log(f"re-timing the {len(chosen)} best feasible trial(s) against the uncompressed model in one fresh "
            f"interleaved measurement ({retime_rounds(bench.cfg)} rounds) ...")
        bench.adopt(baseline)
        models = {n: bench.build(Plan.from_dict(rec.plan), structure_only=True) for n, rec in chosen.items()}
    record = retime_models(bench, models, {n: rec.runtime for n, rec in chosen.items()}, study_budget(study),
                           baseline["latency_ms"])
    try:
        study.set_user_attr(RETIMED_ATTR, record.to_dict())  # one write: a storage transaction, never cut in half
    except Exception as exc:  # noqa: BLE001 - a read-only or locked storage: the figures are still used
        fault = storage_fault(exc)
        if not fault:
            raise
        log(f"note: the re-timing could not be stored in the study ({fault})")
    return record.trials


def best_holding(study):
    """The re-timed trial of highest quality that holds the budget re-timed, or None."""
    held = {n for n, r in retimed(study).items() if r.holds}
    ok = [t for t in feasible_trials(study) if t.number in held]
    return max(ok, key=lambda t: (t.values[0], -(TrialRecord.of(t).latency_ms or 0)), default=None)


def choose_best(study, bench, log=print):
    """The search trial `export --best` exports: the best that holds re-timed (re-timing first
    when trials finished since the stored re-timing). Raises UserError naming --trial N if none holds."""
    if not is_current(study):
        retime(study, bench, log)
    trial = best_holding(study)
    if trial is not None:
        return trial
    found = candidates(study)
    if not found:
        raise UserError("no finished trial meets the budget yet; export another one with --trial N")
    again = retimed(study)
    missed = ", ".join(f"{t.number} ({again[t.number].speedup:.2f}x, low {again[t.number].low:.2f}x)"
                       for t in found if t.number in again)
    raise UserError(f"no trial holds the budget when re-timed (re-timed: {missed}); export one anyway with "
                    f"--trial N, e.g. --trial {found[0].number}")


def miss_warning(study, trial) -> str | None:
    """Why `trial` misses the budget (re-timed, or already in the search), or None when it does not."""
    again = retimed(study).get(trial.number)
    if again is not None and not again.holds:
        target = study_budget(study).target(StudyRecord.of(study).baseline["latency_ms"])
        return (f"trial {trial.number} misses the budget when re-timed: {again.speedup:.2f}x, lower bound "
                f"{again.low:.2f}x < {target:.2f}x at {again.confidence:.0%} confidence")
    cons = TrialRecord.of(trial).constraints or {}
    over = [k for k, v in cons.items() if v > 0]
    if over:
        return f"trial {trial.number} misses the budget in the search ({', '.join(over)})"
    return None
