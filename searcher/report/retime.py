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
from dataclasses import asdict, dataclass

from ..devices.adaptive import speedup_interval, speedup_target
from ..errors import UserError
from ..study.records import CONSTRAINTS, feasible_trials

__all__ = ["RETIMED_ATTR", "RETIME_TOP", "Retimed", "retimed", "candidates", "is_current", "retime",
           "best_holding", "choose_best", "miss_warning", "study_budget"]

RETIMED_ATTR = "retimed"  # study user attr holding the final re-timing
RETIME_TOP = 5            # feasible trials re-timed, best quality first


@dataclass(frozen=True)
class Retimed:
    number: int
    speedup: float     # median of the paired per-round ratios in the re-timing
    low: float         # one-sided lower bound at `confidence`
    high: float        # one-sided upper bound at `confidence`
    confidence: float
    rounds: int
    holds: bool        # low >= the budget's speedup target (True when there is no latency budget)


def study_budget(study) -> dict:
    """The budget the study was created with (confidence 0.9 for studies stored before it existed)."""
    return {"confidence": 0.9, **(study.user_attrs.get("budget") or {})}


def retimed(study) -> dict[int, Retimed]:
    """The stored re-timing by trial number ({} when the study was never re-timed)."""
    rec = study.user_attrs.get(RETIMED_ATTR) or {}
    return {int(n): Retimed(number=int(n), **v) for n, v in rec.get("trials", {}).items()}


def candidates(study, k: int = RETIME_TOP) -> list:
    """The k feasible trials of highest quality (ties: lower latency)."""
    ok = sorted(feasible_trials(study), key=lambda t: (-t.values[0], t.user_attrs.get("latency_ms", 0)))
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

    budget = study_budget(study)
    confidence = budget["confidence"]
    target = speedup_target(budget, study.user_attrs["baseline"]["latency_ms"])
    rounds = max(bench.cfg.device.rounds, bench.cfg.device.max_rounds)
    chosen = candidates(study, k)
    out: dict[int, Retimed] = {}
    baseline_ms = None
    if chosen:
        log(f"re-timing the {len(chosen)} best feasible trial(s) against the uncompressed model in one fresh "
            f"interleaved measurement ({rounds} rounds) ...")
        bench.adopt(study.user_attrs["baseline"])
        models = {str(t.number): bench.build(Plan.from_dict(t.user_attrs["plan"]), structure_only=True)
                  for t in chosen}
        samples = bench.paired_rounds(models, runtimes={str(t.number): t.user_attrs.get("runtime") for t in chosen})(
            rounds)
        base = samples["baseline"]
        baseline_ms = statistics.median(base)
        for t in chosen:
            ratios = [b / c for b, c in zip(base, samples[str(t.number)])]
            low, high = speedup_interval(ratios, confidence)
            out[t.number] = Retimed(t.number, statistics.median(ratios), low, high, confidence, rounds,
                                    target is None or low >= target)
    record = {"candidates": [t.number for t in chosen], "rounds": rounds, "confidence": confidence,
              "target": target, "baseline_ms": baseline_ms,
              "trials": {str(n): {k: v for k, v in asdict(r).items() if k != "number"} for n, r in out.items()}}
    try:
        study.set_user_attr(RETIMED_ATTR, record)  # one write: a storage transaction, never cut in half
    except Exception as exc:  # noqa: BLE001 - a read-only or locked storage: the figures are still used
        fault = storage_fault(exc)
        if not fault:
            raise
        log(f"note: the re-timing could not be stored in the study ({fault})")
    return out


def best_holding(study):
    """The re-timed trial of highest quality that holds the budget re-timed, or None."""
    held = {n for n, r in retimed(study).items() if r.holds}
    ok = [t for t in feasible_trials(study) if t.number in held]
    return max(ok, key=lambda t: (t.values[0], -t.user_attrs.get("latency_ms", 0)), default=None)


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
    budget = study_budget(study)
    again = retimed(study).get(trial.number)
    if again is not None and not again.holds:
        target = speedup_target(budget, study.user_attrs["baseline"]["latency_ms"])
        return (f"trial {trial.number} misses the budget when re-timed: {again.speedup:.2f}x, lower bound "
                f"{again.low:.2f}x < {target:.2f}x at {again.confidence:.0%} confidence")
    cons = trial.user_attrs.get(CONSTRAINTS, {})
    over = [k for k, v in cons.items() if v > 0]
    if over:
        return f"trial {trial.number} misses the budget in the search ({', '.join(over)})"
    return None
