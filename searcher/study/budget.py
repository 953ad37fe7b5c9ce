"""The budget, one value: what the study file's `budget:` section (or the stored study's copy of
it) asks of a candidate, and every judgement made against it.

`Budget.from_section(cfg.budget)` reads the study file's pydantic section, `Budget.from_stored(d)`
the dict a study stored (`records.study_budget(study)`; confidence 0.9 for studies stored before it
existed). One home for:

- the speedup target of each latency figure (`targets`): the main figure (budget.speedup,
  baseline_ms / budget.latency_ms, or a decoder's budget.decode_speedup with the baseline in ms per
  generated token) under "latency", a decoder's budget.prefill_speedup under "prefill";
  `target` is the main one (what the adaptive timing, the size axis's edge and the re-timing hold
  candidates to) and `latency_limit` the latency it allows (the cost model's pre-screen);
- the Optuna constraint values of a measured trial (`constraints`: <= 0 means met) and, read back,
  the budget each constraint would hold (`would_hold`);
- the verdict of a speedup interval against the target (`verdict`: holds, misses, undecided is
  None; the statistics are devices/adaptive.py's), what "holds" means for a re-timed trial
  (`holds`: its lower bound meets the target) and for a final model (`final_holds`: re-timed,
  and its quality and size on the full split).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..config import BudgetSection
from ..devices.adaptive import verdict as interval_verdict

__all__ = ["Budget", "LIMITS"]

# constraint name -> (budget field, sign): the budget a trial would hold is field + sign * constraint
LIMITS = {"speedup": ("speedup", -1), "decode_speedup": ("decode_speedup", -1),
          "prefill_speedup": ("prefill_speedup", -1), "latency_ms": ("latency_ms", 1), "size_mb": ("size_mb", 1),
          "quality_drop": ("max_quality_drop", 1)}


@dataclass(frozen=True)
class Budget:
    latency_ms: float | None = None
    speedup: float | None = None
    decode_speedup: float | None = None  # device.generate: decode tokens per second over the original's
    prefill_speedup: float | None = None  # device.generate: the original's prefill time over the candidate's
    max_quality_drop: float | None = None
    size_mb: float | None = None
    confidence: float = 0.9

    @classmethod
    def from_section(cls, section: BudgetSection) -> Budget:
        """The study file's `budget:` section."""
        return cls(**section.model_dump())

    @classmethod
    def from_stored(cls, stored: dict | None) -> Budget:
        """The budget a study stored (`to_dict`); keys it does not know are left out."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (stored or {}).items() if k in known and v is not None})

    def to_dict(self) -> dict:
        """What a study stores (the section's fields, None included)."""
        return asdict(self)

    @property
    def times_one_forward(self) -> bool:
        """A latency budget on one forward (speedup or latency_ms): the size axis's edge is timed for it."""
        return self.speedup is not None or self.latency_ms is not None

    def targets(self, baseline_ms: float) -> dict[str, float]:
        """The speedup target of each latency figure the budget names: "latency" (one forward, or a
        decoder's decode step) and "prefill" (a decoder's time to first token)."""
        out = {}
        if self.speedup is not None or self.decode_speedup is not None:
            out["latency"] = float(self.speedup if self.speedup is not None else self.decode_speedup)
        elif self.latency_ms is not None:
            out["latency"] = baseline_ms / self.latency_ms
        if self.prefill_speedup is not None:
            out["prefill"] = float(self.prefill_speedup)
        return out

    def target(self, baseline_ms: float) -> float | None:
        """The main figure's speedup target; None without a latency budget."""
        return self.targets(baseline_ms).get("latency")

    def latency_limit(self, baseline_ms: float) -> float | None:
        """The latency a candidate must beat: the baseline over the target; None without a latency budget."""
        target = self.target(baseline_ms)
        return None if target is None else baseline_ms / target

    def verdict(self, low: float, high: float, baseline_ms: float) -> str | None:
        """A speedup interval [low, high] against the target: "holds" (low meets it), "misses" (high is
        below it), "no latency budget", or None (it straddles the target: undecided)."""
        return interval_verdict(low, high, self.target(baseline_ms))

    def holds(self, low: float, baseline_ms: float) -> bool:
        """A (re-)timed speedup's lower bound meets the target (always, without a latency budget)."""
        return self.verdict(low, low, baseline_ms) != "misses"

    def misses(self, high: float, baseline_ms: float) -> bool:
        """Even the upper end `high` of a measured spread is below the target: clearly out of reach."""
        return self.verdict(high, high, baseline_ms) == "misses"

    def fits_size(self, size_mb: float) -> bool:
        return self.size_mb is None or size_mb <= self.size_mb

    def final_holds(self, timed_holds: bool, baseline_quality: float | None, quality: float, size_mb: float) -> bool:
        """A final model holds: its re-timing holds (`timed_holds`, from `holds`), and its quality drop
        on the full validation split (when the uncompressed quality is known) and its size meet the budget."""
        ok = timed_holds
        if self.max_quality_drop is not None and baseline_quality is not None:
            ok = ok and baseline_quality - quality <= self.max_quality_drop  # both on the full split
        return bool(ok and self.fits_size(size_mb))

    def constraints(self, baseline_quality: float, quality: float, latency_ms: float, speedup: float,
                    size_mb: float, prefill_speedup: float | None = None) -> dict[str, float]:
        """Optuna constraint values: <= 0 means the budget is met. With device.generate `speedup` is the
        decode speedup and `prefill_speedup` the prefill's (docs/decoders.md)."""
        out = {}
        if self.speedup is not None:
            out["speedup"] = self.speedup - speedup
        if self.decode_speedup is not None:
            out["decode_speedup"] = self.decode_speedup - speedup
        if self.prefill_speedup is not None:
            out["prefill_speedup"] = self.prefill_speedup - (prefill_speedup if prefill_speedup is not None else 0.0)
        if self.latency_ms is not None:
            out["latency_ms"] = latency_ms - self.latency_ms
        if self.max_quality_drop is not None:
            out["quality_drop"] = (baseline_quality - quality) - self.max_quality_drop
        if self.size_mb is not None:
            out["size_mb"] = size_mb - self.size_mb
        return out

    def would_hold(self, constraints: dict[str, float]) -> tuple[float, dict[str, float]] | None:
        """For a trial's constraint values: (its largest miss relative to the budget, the budget it would
        hold per constraint), or None when none of them names a limit of this budget."""
        asked = self.limits()
        held = {name: asked[name] + LIMITS[name][1] * v for name, v in constraints.items() if name in asked}
        if not held:
            return None
        return max(max(constraints[name], 0.0) / abs(asked[name]) for name in held), held

    def limits(self) -> dict[str, float]:
        """Each constraint's limit, by constraint name, for the limits this budget sets."""
        return {name: getattr(self, key) for name, (key, _) in LIMITS.items() if getattr(self, key)}
