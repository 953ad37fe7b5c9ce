"""The study as stored: its handle, which trials count, the feasible and the best feasible trial.

Everything here reads a study; nothing runs trials (that is `searcher.search` and the
backends), so the backends and the report import it without importing the trial loop."""

from __future__ import annotations

from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from ..config import StudyConfig
from ..errors import UserError
from .storage import open_storage, storage_url

__all__ = ["StudyHandle", "handle_for", "open_study", "best_feasible", "feasible_trials", "counted", "taken", "requeue", "SCHEMA",
           "DIRECTIONS", "FAIL_REASON", "RETRIED", "RETRY_OF", "SEEDED", "REJECTED", "CONSTRAINTS", "HOST", "PID",
           "TRANSFERRED_QUALITY", "TRANSFERRED_FROM", "SOURCE_LATENCY_MS", "LATENCY_SOURCE", "QUEUED_WITH",
           "PREDICTED_BY_RUNTIME", "TIMING_WAIT_S", "TIMING_THREADS"]

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
            if "plan" in t.user_attrs and all(v <= 0 for v in t.user_attrs.get(CONSTRAINTS, {}).values())]


def best_feasible(study: optuna.Study):
    """The feasible trial of highest quality (ties: lower latency), or None."""
    ok = feasible_trials(study)
    if not ok:
        return None
    return max(ok, key=lambda t: (t.values[0], -t.user_attrs.get("latency_ms", 0)))


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
