"""The study as stored: its handle, which trials count, the feasible and the best feasible trial.

Everything here reads a study; nothing runs trials (that is `searcher.search` and the
backends), so the backends and the report import it without importing the trial loop."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import optuna
from optuna.trial import TrialState

from ..config import StudyConfig
from ..errors import UserError
from .budget import Budget
from .storage import open_storage, storage_url

__all__ = ["StudyHandle", "handle_for", "open_study", "best_feasible", "feasible_trials", "counted", "taken", "requeue", "SCHEMA",
           "DIRECTIONS", "FAIL_REASON", "RETRIED", "RETRY_OF", "SEEDED", "REJECTED", "CONSTRAINTS", "HOST", "PID",
           "TRANSFERRED_QUALITY", "TRANSFERRED_FROM", "SOURCE_LATENCY_MS", "LATENCY_SOURCE", "QUEUED_WITH",
           "PREDICTED_BY_RUNTIME", "TIMING_WAIT_S", "TIMING_THREADS", "study_budget", "Retimed", "Retiming",
           "TrialRecord", "FinalRecord", "StudyRecord", "write_trial", "write_study", "RETIMED_ATTR", "TIMING_ATTR",
           "FULL_QUALITY_ATTR"]

SCHEMA = 1  # version of what slimformer stores in a study
DIRECTIONS = {"quality": "maximize", "latency": "minimize", "size": "minimize"}

# the user attributes of a trial that slimformer itself reads back (the measured figures,
# `quality`, `latency_ms`, ..., are the keys of `study.trial.evaluate`'s result)
FAIL_REASON = "fail_reason"  # why a FAIL trial failed
RETRIED = "retried"  # a FAIL trial whose plan was queued again: the retry counts, this one does not
RETRY_OF = "retry_of"  # on the retry: the number of the trial it repeats
SEEDED = "seeded"  # queued before the sampler ran: True (uniform plans) or "sensitivity"
REJECTED = "rejected"  # a PRUNED trial the cost model screened out, and why
CONSTRAINTS = "constraints"  # budget constraints {name: value}; feasible when every value <= 0
HOST, PID = "host", "pid"  # the process running a trial (see study.owners)
TRANSFERRED_QUALITY = "transferred_quality"  # quality measured by another device's study (study.transfer)
TRANSFERRED_FROM = "transferred_from"  # "<study>#<trial number>" it came from
SOURCE_LATENCY_MS = "source_latency_ms"  # its latency on the other device
LATENCY_SOURCE = "latency_source"  # "measured" or "predicted" (by the cost model)
PREDICTED_BY_RUNTIME = "predicted_runtime_ms"  # device.runtime auto: {runtime: predicted ms} (cost.screen)
TIMING_WAIT_S = "timing_wait_s"  # seconds the trial waited for the host's timing lock (devices/timelock.py)
TIMING_THREADS = "timing_threads"  # the torch threads its latency was measured at: device.threads, any --workers
# the study user attributes stored apart from StudyRecord
RETIMED_ATTR = "retimed"  # the search's final re-timing (Retiming; report/retime.py)
TIMING_ATTR = "timing"  # a final study's re-timing (Retiming; study/finals.py)
FULL_QUALITY_ATTR = "quality_full"  # {"baseline": q, "trials": {"N": q}} on the full split (report/collect.py)
QUEUED_WITH = (SEEDED, TRANSFERRED_QUALITY, TRANSFERRED_FROM, SOURCE_LATENCY_MS)  # kept when queued again


@dataclass
class StudyHandle:
    url: str
    name: str


def handle_for(cfg: StudyConfig, storage: str | None = None, study_name: str | None = None) -> StudyHandle:
    name = study_name or cfg.name
    return StudyHandle(storage_url(storage or cfg.search.storage, cfg.path, name), name)


def open_study(handle: StudyHandle, read_only: bool = True) -> optuna.Study:
    storage = open_storage(handle.url, read_only=read_only)
    try:
        return optuna.load_study(study_name=handle.name, storage=storage)
    except KeyError:
        raise UserError(f"no study named {handle.name!r} in {handle.url}") from None


def counted(trial) -> bool:
    """Finished trials that count toward --trials (a crashed trial queued again does not)."""
    if trial.state == TrialState.COMPLETE:
        return True
    return trial.state == TrialState.FAIL and not trial.user_attrs.get(RETRIED)


def feasible_trials(study: optuna.Study) -> list:
    """Finished trials that met every budget constraint in the search."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if _feasible(TrialRecord.of(t))]


def _feasible(rec: TrialRecord) -> bool:
    return rec.plan is not None and all(v <= 0 for v in (rec.constraints or {}).values())


def best_feasible(study: optuna.Study):
    """The feasible trial of highest quality (ties: lower latency), or None."""
    ok = feasible_trials(study)
    if not ok:
        return None
    return max(ok, key=lambda t: (t.values[0], -(TrialRecord.of(t).latency_ms or 0)))


def taken(study: optuna.Study) -> int:
    """Finished trials plus those running now in any process: a driver starts a trial only while
    this is below the target, so parallel workers stop at the total (see searcher/backends/workers.py)."""
    return sum(counted(t) or t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False))


def requeue(study: optuna.Study, trial, reason: str) -> bool:
    """Fail a running trial that was cut off through no fault of its plan (Ctrl-C, a worker that
    did not start, a process that died, a stopped Ray run) and queue its plan again, with the
    attributes it was queued with (QUEUED_WITH): the retry takes its place in the count. A trial
    cut off before it had a plan is only failed (and counts). `trial` is an `optuna.Trial` or a
    `FrozenTrial`; returns whether the plan was queued again."""
    frozen = study._storage.get_trial(trial._trial_id)
    params = frozen.system_attrs.get("fixed_params") or frozen.params  # a queued plan is queued again whole
    study._storage.set_trial_user_attr(frozen._trial_id, FAIL_REASON, reason)
    study._storage.set_trial_user_attr(frozen._trial_id, RETRIED, bool(params))
    study.tell(frozen.number, state=TrialState.FAIL)
    if params:
        keep = {k: v for k, v in frozen.user_attrs.items() if k in QUEUED_WITH}
        study.enqueue_trial(params, user_attrs={**keep, RETRY_OF: frozen.number})
    return bool(params)


def study_budget(study) -> Budget:
    """The budget the study was created with (confidence 0.9 for studies stored before it existed)."""
    return Budget.from_stored(StudyRecord.of(study).budget)


@dataclass(frozen=True)
class Retimed:
    """One model re-timed against the uncompressed model (report/retime.py `retime_models`)."""
    number: int        # its search trial
    speedup: float     # median of the paired per-round ratios in the re-timing
    low: float         # one-sided lower bound at `confidence`
    high: float        # one-sided upper bound at `confidence`
    confidence: float
    rounds: int
    holds: bool        # the budget holds re-timed (`Budget.holds`: True when there is no latency budget)

    def to_dict(self) -> dict:
        """As stored, and as a summary, the report and an export's metrics show it."""
        return {"speedup": self.speedup, "low": self.low, "high": self.high, "confidence": self.confidence,
                "rounds": self.rounds, "holds": self.holds}


@dataclass(frozen=True)
class Retiming:
    """One re-timing of several models in one interleaved measurement: the search's (study user attr
    `report.retime.RETIMED_ATTR`) and finish's (the final study's `finals.TIMING_ATTR`), one shape."""
    candidates: list[int]  # the search trials chosen to be re-timed
    rounds: int
    confidence: float
    target: float | None  # the budget's speedup target (None: no latency budget)
    baseline_ms: float | None  # the uncompressed model's median in this measurement (None: nothing timed)
    trials: dict[int, Retimed]

    def to_dict(self) -> dict:
        return {"candidates": list(self.candidates), "rounds": self.rounds, "confidence": self.confidence,
                "target": self.target, "baseline_ms": self.baseline_ms,
                "trials": {str(n): r.to_dict() for n, r in self.trials.items()}}

    @classmethod
    def from_dict(cls, stored: dict | None) -> Retiming:
        """A stored re-timing ({} or None: nothing re-timed); finish's older records name the rounds
        and confidence once, not per model."""
        d = stored or {}
        common = {"rounds": d.get("rounds"), "confidence": d.get("confidence")}
        trials = {int(n): Retimed(number=int(n), **{**common, **v}) for n, v in (d.get("trials") or {}).items()}
        return cls(list(d.get("candidates", trials)), d.get("rounds"), d.get("confidence"), d.get("target"),
                   d.get("baseline_ms"), trials)


@dataclass
class TrialRecord:
    """A search trial's user attributes, typed: each field is one attribute, under its own name
    (the measured figures are `trial.evaluate`'s result; `trial.record` writes them with the
    budget's constraints). Read with `TrialRecord.of(trial)`, written with `write_trial`; the
    attributes of nobody's field (a newer slimformer's) are kept in `extra`."""
    plan: dict | None = None  # the trial's Plan.to_dict()
    quality: float | None = None
    latency_ms: float | None = None  # study baseline over the paired speedup (drift-free)
    latency_raw_ms: float | None = None
    latency_spread_ms: float | None = None
    speedup: float | None = None
    speedup_low: float | None = None  # the interval (devices/adaptive.py INTERVAL_KEYS)
    speedup_high: float | None = None
    confidence: float | None = None
    rounds: int | None = None
    timing_verdict: str | None = None
    size_mb: float | None = None
    params: int | None = None
    simulated: bool | None = None
    build_s: float | None = None
    eval_s: float | None = None
    runtime: str | None = None  # the runtime the latency and quality were measured in
    runtime_speedups: dict | None = None  # device.runtime auto: each runtime's first estimate
    latency_source: str | None = None  # LATENCY_SOURCE: "measured" or "predicted"
    timing_wait_s: float | None = None
    timing_threads: int | None = None
    feasible: bool | None = None
    constraints: dict | None = None  # CONSTRAINTS
    predicted_latency_ms: float | None = None
    predicted_runtime_ms: dict | None = None  # PREDICTED_BY_RUNTIME
    latency_phase: str | None = None  # a decoder's (device.generate): the phase latency_ms times
    decode_tokens_per_s: float | None = None
    prefill_ms: float | None = None
    prefill_baseline_ms: float | None = None
    prefill_speedup: float | None = None
    prefill_speedup_low: float | None = None
    prefill_speedup_high: float | None = None
    decode_loop: str | None = None  # a decoder's: whose generation loop timed it (openvino_genai.LLMPipeline, slimformer's)
    fail_reason: str | None = None
    retried: bool | None = None
    retry_of: int | None = None
    seeded: bool | str | None = None
    rejected: str | None = None
    host: str | None = None
    pid: int | None = None
    transferred_quality: float | None = None
    transferred_from: str | None = None
    source_latency_ms: float | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_attrs(cls, attrs: dict) -> TrialRecord:
        known = _field_names(cls)
        return cls(**{k: v for k, v in attrs.items() if k in known},
                   extra={k: v for k, v in attrs.items() if k not in known})

    @classmethod
    def of(cls, trial) -> TrialRecord:
        """An Optuna trial's (a FrozenTrial's or a running Trial's) attributes."""
        return cls.from_attrs(trial.user_attrs)

    def attrs(self, *names: str) -> dict:
        """The attributes as stored (set fields only), or only those of `names`."""
        out = {k: getattr(self, k) for k in _field_names(type(self)) if getattr(self, k) is not None}
        out.update(self.extra)
        return {k: out.get(k) for k in names} if names else out


@dataclass
class FinalRecord:
    """A final model's attributes (a COMPLETE trial of the `<name>:final` study, study/finals.py)."""
    search_trial: int
    plan: dict
    quality: float  # on the full validation split
    steps: int = 0  # distillation steps it ran
    steps_asked: int | None = None
    test_quality: float | None = None
    search_quality: float | None = None
    search_speedup: float | None = None
    size_mb: float | None = None
    params: int | None = None
    simulated: bool | None = None
    path: str | None = None  # its saved folder
    wall_s: float | None = None

    @classmethod
    def of(cls, trial) -> FinalRecord:
        known = _field_names(cls)
        return cls(**{k: v for k, v in trial.user_attrs.items() if k in known})

    def attrs(self) -> dict:
        return asdict(self)


@dataclass
class StudyRecord:
    """A study's user attributes, typed (what `search.prepare` stores with a new study; a final study
    stores `search_study` and `baseline`). The re-timing (`Retiming`) and owner keys are stored apart."""
    schema: int | None = None
    objectives: list | None = None
    space_fingerprint: str | None = None
    model: str | None = None
    task: str | None = None
    metric: str | None = None
    budget: dict | None = None  # Budget.to_dict(): read it with `study_budget`
    device: dict | None = None
    data: dict | None = None
    baseline: dict | None = None  # the uncompressed model as measured when the study was created
    search_study: str | None = None  # a final study's search study

    @classmethod
    def of(cls, study) -> StudyRecord:
        known = _field_names(cls)
        return cls(**{k: v for k, v in study.user_attrs.items() if k in known})


def _field_names(cls) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls)) - {"extra"}


def write_trial(trial, **attrs) -> None:
    """Set trial attributes by TrialRecord field name (an Optuna `Trial`)."""
    unknown = set(attrs) - _field_names(TrialRecord)
    if unknown:
        raise ValueError(f"not a TrialRecord field: {sorted(unknown)}")
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


def write_study(study, **attrs) -> None:
    """Set study attributes by StudyRecord field name."""
    unknown = set(attrs) - _field_names(StudyRecord)
    if unknown:
        raise ValueError(f"not a StudyRecord field: {sorted(unknown)}")
    for key, value in attrs.items():
        study.set_user_attr(key, value)
