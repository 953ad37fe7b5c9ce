"""Online calibration of the cost model against measured latencies.

`CalibratedPredictor` wraps `costmodel.predict` for one model config and input size. Each
`observe(plan, measured_ms)` adds a point; the residual log(measured / predicted) is then
modelled from a few plan features (log predicted ms, share of kept layers per precision,
kept-layer fraction, mean kept head and FFN fractions): with fewer than `min_fit`
observations by their median (one scale factor), from `min_fit` on by ridge regression
(standardised features, regularisation chosen by leave-one-out). `error()` reports
leave-one-out MAPE and Spearman, i.e. how well it predicts plans it has not seen.

Give `observe` the baseline's median from the same interleaved rounds when there is one:
measurements are then drift-corrected (measured speedup x the typical baseline), which
removes most of the noise a shared machine adds between measurements.
"""

from __future__ import annotations

import math

import numpy as np
from slimformer.methods.plan import SIMULATED_BITS, Plan

from .costmodel import compile_profile, model_facts, predict

__all__ = ["CalibratedPredictor", "mape", "spearman"]

DEFAULT_MARGIN = 0.25  # relative error assumed before any observation


def mape(predicted, measured) -> float:
    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    return float(np.mean(np.abs(p - m) / m)) if len(m) else float("nan")


def spearman(predicted, measured) -> float:
    if len(measured) < 3:
        return float("nan")
    from scipy.stats import spearmanr

    rho = spearmanr(predicted, measured).statistic
    return float(rho) if rho == rho else float("nan")


class CalibratedPredictor:
    """Profile-based predictions, corrected by what was measured on this device so far."""

    def __init__(self, profile, config, seq_len: int = 128, batch_size: int = 1, *, min_fit: int = 5,
                 pooler: bool = True):
        self.profile = compile_profile(profile)
        self.config, self.seq_len, self.batch_size, self.pooler = config, seq_len, batch_size, pooler
        self.min_fit = max(2, int(min_fit))
        self.facts = model_facts(config, pooler)
        self._plans: list[Plan] = []
        self._measured: list[float] = []
        self._baseline: list[float | None] = []
        self._raw: dict[Plan, dict] = {}
        self._model = None
        self._dirty = False

    # ----- raw predictions and features -----------------------------------------------------
    def predict_raw(self, plan: Plan) -> dict:
        hit = self._raw.get(plan)
        if hit is None:
            hit = predict(plan, self.config, self.profile, self.seq_len, self.batch_size, pooler=self.pooler)
            if len(self._raw) > 10000:
                self._raw.clear()
            self._raw[plan] = hit
        return hit

    def _features(self, plan: Plan) -> list[float]:
        shape = self.facts.shape
        p = plan.resolve(shape)
        n = max(1, len(p.layers))
        bits = [p.bits[i] for i in p.layers]
        return [
            math.log(max(self.predict_raw(plan)["latency_ms"], 1e-6)),
            sum(b == 32 or b in SIMULATED_BITS for b in bits) / n,
            sum(b == 16 for b in bits) / n,
            sum(b == 8 for b in bits) / n,
            len(p.layers) / shape.num_layers,
            sum(p.heads[i] for i in p.layers) / (n * shape.num_heads),
            sum(p.ffn[i] for i in p.layers) / (n * shape.intermediate_size),
        ]

    # ----- observations -------------------------------------------------------------------
    def observe(self, plan: Plan, measured_ms: float, baseline_ms: float | None = None) -> None:
        """Add a measurement. `baseline_ms`: the uncompressed model's median from the same
        interleaved rounds; with it the measurement is drift-corrected (see `targets`)."""
        for name, value in (("measured_ms", measured_ms), ("baseline_ms", baseline_ms)):
            if value is None and name == "baseline_ms":
                continue
            if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        self._plans.append(plan)
        self._measured.append(float(measured_ms))
        self._baseline.append(None if baseline_ms is None else float(baseline_ms))
        self._dirty = True

    @property
    def n(self) -> int:
        return len(self._measured)

    def targets(self) -> list[float]:
        """What the residual model fits: each measurement, or, where its baseline was given,
        measured * (median baseline over all observations / its baseline), i.e. its measured
        speedup at the typical load: load drifting between measurements cancels out."""
        bases = [b for b in self._baseline if b is not None]
        ref = float(np.median(bases)) if bases else 0.0
        return [m if b is None else m * ref / b for m, b in zip(self._measured, self._baseline)]

    def _fit(self, idx: list[int]):
        """A residual model on the observations `idx`: ('scale', log ratio) or ('ridge', model)."""
        target = self.targets()
        y = np.array([math.log(target[i] / self.predict_raw(self._plans[i])["latency_ms"]) for i in idx])
        if len(idx) < self.min_fit:
            return ("scale", float(np.median(y)) if len(y) else 0.0)
        from sklearn.linear_model import RidgeCV
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        x = np.array([self._features(self._plans[i]) for i in idx])
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 3, 11)))
        return ("ridge", model.fit(x, y))

    @staticmethod
    def _apply(model, features: list[float]) -> float:
        kind, m = model
        return m if kind == "scale" else float(m.predict(np.array([features]))[0])

    def predict(self, plan: Plan) -> dict:
        """The raw prediction with latency_ms calibrated (raw_latency_ms keeps the profile's)."""
        raw = self.predict_raw(plan)
        if self._dirty or self._model is None:
            self._model, self._dirty = self._fit(list(range(self.n))), False
        log_ratio = self._apply(self._model, self._features(plan)) if self.n else 0.0
        return {**raw, "raw_latency_ms": raw["latency_ms"], "latency_ms": raw["latency_ms"] * math.exp(log_ratio),
                "calibrated": self.n > 0, "observations": self.n}

    # ----- accuracy -----------------------------------------------------------------------
    def loo_predictions(self) -> list[float]:
        """Each observed plan predicted by a model fitted on all the other observations."""
        out = []
        for i in range(self.n):
            others = [j for j in range(self.n) if j != i]
            model = self._fit(others)
            raw = self.predict_raw(self._plans[i])["latency_ms"]
            out.append(raw * math.exp(self._apply(model, self._features(self._plans[i]))))
        return out

    def error(self) -> dict:
        """Leave-one-out {"mape", "spearman", "n"} of the calibrated model against `targets()`
        (drift-corrected where baselines were given), plus the profile-only raw_mape and
        raw_spearman; NaN where undefined."""
        raw = [self.predict_raw(p)["latency_ms"] for p in self._plans]
        loo = self.loo_predictions() if self.n >= 2 else raw
        y = self.targets()
        return {"mape": mape(loo, y), "spearman": spearman(loo, y), "n": self.n,
                "raw_mape": mape(raw, y), "raw_spearman": spearman(raw, y),
                "method": "leave-one-out" if self.n >= 2 else "raw",
                "drift_corrected": any(b is not None for b in self._baseline)}

    def margin(self, quantile: float = 0.9) -> float:
        """Relative error margin: the `quantile` of leave-one-out |prediction - measured| /
        measured over the raw measurements (so it also covers load drift), at least 0.05;
        0.25 before `min_fit` observations. A candidate whose prediction * (1 - margin) still
        exceeds the latency budget can be rejected without measuring it."""
        if self.n < self.min_fit:
            return DEFAULT_MARGIN
        measured = np.array(self._measured)
        errs = np.abs(np.array(self.loo_predictions()) - measured) / measured
        return float(max(0.05, np.quantile(errs, quantile)))
