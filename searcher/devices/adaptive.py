"""Speedup intervals and adaptive timing: spend latency rounds where the budget decision is.

A candidate is timed against the uncompressed model in interleaved rounds (searcher/devices/latency.py);
each round gives one paired ratio baseline_ms / candidate_ms. The speedup is the median of those
ratios, and its interval is a percentile bootstrap of that median over the ratios (seeded, so the
same rounds always give the same interval; Efron & Tibshirani 1993, ch. 13).

`low` and `high` are ONE-SIDED bounds at `confidence` c: low is the (1 - c) quantile of the
bootstrap medians, high the c quantile. A budget **holds** at confidence c when `low >= target`
(the target speedup: searcher/study/budget.py turns the budget into it). It clearly **misses**
when `high < target`. Between the two the interval straddles the budget and more rounds are
timed, `step` at a time, until it clears the edge or `cap` rounds are reached; a candidate still
undecided at the cap does not hold. `study.trial.time_candidate` runs this for a trial.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["SpeedupEstimate", "speedup_interval", "adaptive_speedup", "verdict", "INTERVAL_KEYS", "RESAMPLES"]

RESAMPLES = 2000  # bootstrap resamples: the bounds move by well under 0.01x between seeds at this count
INTERVAL_KEYS = ("speedup_low", "speedup_high", "confidence", "rounds", "timing_verdict")  # trial user attrs


@dataclass(frozen=True)
class SpeedupEstimate:
    speedup: float        # median of the paired per-round ratios
    low: float            # one-sided lower bound at `confidence`
    high: float           # one-sided upper bound at `confidence`
    confidence: float
    rounds: int           # paired rounds timed
    verdict: str          # holds | misses | undecided (cap reached) | no latency budget
    candidate_ms: float   # candidate median (ms): a note, the ratio is the figure
    spread_ms: float      # candidate p90 - p10 (ms)
    runtime: str | None = None  # the runtime these rounds ran the candidate in
    runtime_speedups: dict | None = None  # device.runtime auto: each competing runtime's first estimate

    def attrs(self) -> dict:
        """The trial user attrs (INTERVAL_KEYS) this estimate is stored as."""
        return dict(zip(INTERVAL_KEYS, (self.low, self.high, self.confidence, self.rounds, self.verdict)))


def speedup_interval(ratios: list[float], confidence: float, seed: int = 0,
                     resamples: int = RESAMPLES) -> tuple[float, float]:
    """One-sided bootstrap bounds (low, high) at `confidence` on the median of paired ratios."""
    x = np.asarray(ratios, dtype=float)
    if x.size == 0:
        raise ValueError("no rounds to bound")
    rng = np.random.default_rng(seed)
    medians = np.median(x[rng.integers(0, x.size, size=(resamples, x.size))], axis=1)
    return float(np.quantile(medians, 1 - confidence)), float(np.quantile(medians, confidence))


def verdict(low: float, high: float, target: float | None) -> str | None:
    """An interval against a target speedup: holds, misses, no latency budget, or None (undecided).
    The target is the study's budget's (searcher/study/budget.py)."""
    if target is None:
        return "no latency budget"
    if low >= target:
        return "holds"
    if high < target:
        return "misses"
    return None


def adaptive_speedup(more_rounds: Callable[[int], tuple[list[float], list[float]]], target: float | None,
                     confidence: float = 0.9, first: int = 20, step: int = 10, cap: int = 60,
                     seed: int = 0) -> SpeedupEstimate:
    """Time `first` rounds, then `step` more at a time while the interval straddles `target`,
    up to `cap` rounds in all. `more_rounds(n)` times n more interleaved rounds and returns the
    baseline's and the candidate's per-round times (ms), paired by position."""
    base: list[float] = []
    cand: list[float] = []
    n = min(first, cap)
    while True:
        b, c = more_rounds(n)
        if len(b) != n or len(c) != n:
            raise ValueError(f"asked for {n} rounds, got {len(b)} baseline and {len(c)} candidate times")
        base += b
        cand += c
        ratios = [x / y for x, y in zip(base, cand)]
        low, high = speedup_interval(ratios, confidence, seed)
        said = verdict(low, high, target)
        if said is None and len(ratios) >= cap:
            said = "undecided"
        if said is not None:
            q = np.quantile(cand, [0.1, 0.9])
            return SpeedupEstimate(statistics.median(ratios), low, high, confidence, len(ratios), said,
                                   statistics.median(cand), float(q[1] - q[0]))
        n = min(step, cap - len(ratios))
