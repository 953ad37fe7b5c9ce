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

__all__ = ["StudyHandle", "handle_for", "open_study", "best_feasible", "feasible_trials", "counted", "taken", "SCHEMA",
           "DIRECTIONS"]

SCHEMA = 1  # version of what slimformer stores in a study
DIRECTIONS = {"quality": "maximize", "latency": "minimize", "size": "minimize"}


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
    return trial.state == TrialState.FAIL and not trial.user_attrs.get("retried")


def feasible_trials(study: optuna.Study) -> list:
    """Finished trials that met every budget constraint in the search."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if "plan" in t.user_attrs and all(v <= 0 for v in t.user_attrs.get("constraints", {}).values())]


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
