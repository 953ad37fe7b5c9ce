"""Cost-model screening of a study: one calibrated predictor (`costfit.CalibratedPredictor`) per
runtime the study times candidates in: the named runtime, or under `device.runtime: auto` every
competing installed runtime, each from its own device profile and calibrated online on its own
measured latency (a trial under auto records every runtime's first estimate in `runtime_speedups`).
A candidate is predicted in each runtime that can run it, and skipped only when even its fastest
runtime is predicted clearly over the budget (beyond that runtime's leave-one-out error margin), and
never when a runtime would run it in a format its profile did not time (`Runtime.predicts`, and the
profile's own tables: `CompiledProfile.covers`); such a runtime's figure is left out of the prediction.
Without a profile for every runtime there is no screening: every candidate is measured.
"""

from __future__ import annotations

from slimformer.methods.plan import Plan

from ..devices.registry import fastest, get_runtime, kept_bits, runtimes_for_plan
from .costfit import CalibratedPredictor
from .profile import RUNTIMES as PROFILED
from .profile import find_profile

__all__ = ["StudyPredictor", "study_predictor", "profile_command"]


def profile_command(runtime: str, threads: int) -> str:
    """The command that makes the missing profile."""
    return f"slimformer profile{'' if runtime == 'eager' else f' --runtime {runtime}'} --threads {threads}"


class StudyPredictor:
    """The cost model of a study: {runtime: CalibratedPredictor}; a plan counts in its fastest runtime."""

    def __init__(self, predictors: dict[str, CalibratedPredictor]):
        if not predictors:
            raise ValueError("a study predictor needs at least one runtime")
        self.predictors = dict(predictors)
        self.facts = next(iter(self.predictors.values())).facts  # one model: the same facts in every runtime

    def runtimes_for(self, plan: Plan) -> list[str]:
        """The runtimes that can run `plan` as built on this CPU (Runtime.plan_refusal)."""
        return list(runtimes_for_plan(list(self.predictors), plan.resolve(self.facts.shape))) or list(self.predictors)

    def _covered(self, rt: str, plan: Plan) -> bool:
        """Whether runtime `rt`'s profile has a table for every format `plan` runs in there."""
        p = plan.resolve(self.facts.shape)
        bits = kept_bits(p)
        return get_runtime(rt).predicts(bits, p.int8_scheme) and \
            self.predictors[rt].profile.covers(bits, p.int8_scheme)

    def predict(self, plan: Plan) -> dict:
        """The calibrated prediction in the fastest runtime (`runtime`), with every runtime's latency
        (`by_runtime`, ms); runtimes whose profile has no table for the plan's formats are left out unless
        none has one."""
        runtimes = self.runtimes_for(plan)
        runtimes = [rt for rt in runtimes if self._covered(rt, plan)] or runtimes
        preds = {rt: self.predictors[rt].predict(plan) for rt in runtimes}
        best = fastest({rt: 1.0 / p["latency_ms"] for rt, p in preds.items()})  # the speedup is baseline / latency
        return {**preds[best], "runtime": best, "by_runtime": {rt: p["latency_ms"] for rt, p in preds.items()}}

    def rejection(self, plan: Plan, limit_ms: float) -> str | None:
        """Why `plan` can be skipped without measuring it: every runtime that can run it is predicted
        over `limit_ms` even after taking off its error margin; None when some runtime may hold."""
        over = {}
        for rt in self.runtimes_for(plan):
            if not self._covered(rt, plan):  # a format this runtime's profile did not time
                return None
            pred = self.predictors[rt].predict(plan)["latency_ms"]
            if pred <= limit_ms:  # within the budget before any margin: no need to fit the margin
                return None
            margin = self.predictors[rt].margin()
            if pred * (1 - margin) <= limit_ms:
                return None
            over[rt] = (pred, margin)
        if len(over) == 1:
            (pred, margin), = over.values()
            return (f"predicted {pred:.1f} ms exceeds the {limit_ms:.1f} ms budget beyond the cost model's "
                    f"{margin:.0%} error margin")
        return ("predicted " + ", ".join(f"{p:.1f} ms in {rt}" for rt, (p, _) in over.items())
                + f": each exceeds the {limit_ms:.1f} ms budget beyond its cost model's error margin ("
                + ", ".join(f"{m:.0%}" for _, m in over.values()) + ")")

    def observe(self, plan: Plan, latencies: dict) -> None:
        """Calibrate each runtime's predictor on its own measured latency ({runtime: ms}; a single
        runtime's study also takes the key None, from trials that did not record their runtime)."""
        for rt, ms in latencies.items():
            if rt is None and len(self.predictors) == 1:
                rt = next(iter(self.predictors))
            if rt in self.predictors and ms:
                self.predictors[rt].observe(plan, ms)

    def errors(self, least: int = 3) -> dict[str, dict]:
        """{runtime: leave-one-out accuracy (`CalibratedPredictor.error`)} of runtimes with >= `least`
        observations."""
        return {rt: p.error() for rt, p in self.predictors.items() if p.n >= least}


def study_predictor(runtimes, threads: int, profile_path, config, seq_len: int, batch_size: int, pooler: bool,
                    log) -> StudyPredictor | None:
    """The study's cost model (not yet fitted on any trial), or None, with one line saying why, when a
    runtime has no profile grid or no profile for this CPU/threads. `profile_path` (device.profile)
    serves a single runtime; several (auto) use this device's cached profiles."""
    runtimes = tuple(runtimes)
    missing = [rt for rt in runtimes if rt not in PROFILED]
    if missing:
        log(f"the cost model has no profiles for runtime {', '.join(missing)} yet: every candidate is measured")
        return None
    path = profile_path if len(runtimes) == 1 else None
    if profile_path is not None and path is None:
        log("device.profile names one runtime's profile: with several runtimes each uses this device's cached one")
    profiles = {rt: find_profile(threads, rt, path) for rt in runtimes}  # ProfileError: a bad device.profile
    absent = [rt for rt, p in profiles.items() if p is None]
    if absent:
        log(f"no device profile for this CPU/{threads} threads/{', '.join(absent)}: candidates are measured without "
            f"cost-model screening (make {'one' if len(absent) == 1 else 'them'} with "
            + ", ".join(f"`{profile_command(rt, threads)}`" for rt in absent) + ")")
        return None
    return StudyPredictor({rt: CalibratedPredictor(p, config, seq_len, batch_size, pooler=pooler)
                           for rt, p in profiles.items()})
