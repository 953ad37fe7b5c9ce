"""Speedup intervals and adaptive timing: spend latency rounds where the budget decision is.

A candidate is timed against the uncompressed model in interleaved rounds (searcher/devices/latency.py);
each round gives one paired ratio baseline_ms / candidate_ms. The speedup is the median of those
ratios, and its interval is a percentile bootstrap of that median over the ratios (seeded, so the
same rounds always give the same interval; Efron & Tibshirani 1993, ch. 13).

`low` and `high` are ONE-SIDED bounds at `confidence` c: low is the (1 - c) quantile of the
bootstrap medians, high the c quantile. A budget **holds** at confidence c when `low >= target`
(the target speedup; a latency_ms budget is turned into the speedup target baseline_ms /
latency_ms). It clearly **misses** when `high < target`. Between the two the interval straddles
the budget and more rounds are timed, `step` at a time, until it clears the edge or `cap` rounds
are reached; a candidate still undecided at the cap does not hold.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

__all__ = ["SpeedupEstimate", "speedup_interval", "adaptive_speedup", "speedup_target", "time_candidate",
           "INTERVAL_KEYS", "RESAMPLES"]

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


def _verdict(low: float, high: float, target: float | None) -> str | None:
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
        verdict = _verdict(low, high, target)
        if verdict is None and len(ratios) >= cap:
            verdict = "undecided"
        if verdict is not None:
            q = np.quantile(cand, [0.1, 0.9])
            return SpeedupEstimate(statistics.median(ratios), low, high, confidence, len(ratios), verdict,
                                   statistics.median(cand), float(q[1] - q[0]))
        n = min(step, cap - len(ratios))


def speedup_target(budget, baseline_ms: float) -> float | None:
    """The speedup a latency budget asks for (budget.speedup, or baseline_ms / budget.latency_ms; for a
    decoder with device.generate budget.decode_speedup, the baseline then in ms per generated token)."""
    get = budget.get if isinstance(budget, dict) else (lambda key: getattr(budget, key, None))
    speedup = get("speedup") if get("speedup") is not None else get("decode_speedup")
    latency = budget.get("latency_ms") if isinstance(budget, dict) else budget.latency_ms
    if speedup is not None:
        return float(speedup)
    if latency is not None:
        return baseline_ms / latency
    return None


def time_candidate(bench, model, baseline: dict, runtimes: tuple[str, ...] | None = None,
                   runners: dict | None = None) -> SpeedupEstimate:
    """Adaptive timing of `model` against the one baseline on the study's device: the first estimate
    uses device.rounds, then step = max(5, rounds // 2) more while undecided, up to device.max_rounds
    (never fewer than device.rounds).

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
    best = max(runtimes, key=ratios.get)
    if len(runtimes) > 1:  # the others are not timed any further
        timer = bench.paired_runners({best: runners[best]})
    pending = [(first["baseline"], first[best])]

    def more(n: int):
        if pending:
            return pending.pop()
        samples = timer(n)
        return samples["baseline"], samples[best]

    est = adaptive_speedup(more, speedup_target(cfg.budget, baseline["latency_ms"]), cfg.budget.confidence,
                           first=d.rounds, step=max(5, d.rounds // 2), cap=max(d.rounds, d.max_rounds))
    return replace(est, runtime=best, runtime_speedups=ratios if len(runtimes) > 1 else None)
