"""The local backend: this process runs the trial loop (ask, propose, evaluate, record, tell),
one trial at a time, evaluating each candidate in this process or in an isolated worker
process (isolate.py). It is also the loop each `--workers` process runs.
"""

from __future__ import annotations

import time

from optuna.storages._heartbeat import get_heartbeat_thread, is_heartbeat_enabled
from optuna.trial import TrialState

from ..study.owners import fail_stale_trials, owner_attrs
from ..study.records import (
    FAIL_REASON,
    LATENCY_SOURCE,
    REJECTED,
    TRANSFERRED_FROM,
    TRANSFERRED_QUALITY,
    best_feasible,
    counted,
    requeue,
    taken,
)
from ..study.session import SearchSession
from ..study.storage import storage_fault
from ..study.trial import MAX_REJECTIONS_IN_A_ROW, Rejected, predicted, propose, record
from .isolate import WorkerStartError, make_runner
from .progress import SearchProgress
from .signals import interruptible, protected

__all__ = ["run"]


def run(session: SearchSession) -> None:
    """Run trials here until the study has `session.target` taken trials or the time is up."""
    study, cfg, log = session.study, session.cfg, session.log
    done = sum(counted(t) for t in study.get_trials(deepcopy=False))
    rejected_in_a_row = 0
    started = time.monotonic()
    bar = SearchProgress(session.target, done, session.baseline, enabled=session.progress, log=log)
    runner = make_runner(session)
    with bar:
        try:
            while taken(study) < session.target and \
                    (session.timeout is None or time.monotonic() - started < session.timeout):
                if is_heartbeat_enabled(study._storage):  # another host's crashed trial must not hold a slot
                    fail_stale_trials(study, log)
                with protected():  # a stop request waits for storage writes, abandons a running candidate
                    outcome = _run_one(session, runner, bar,
                                       cfg.search.prescreen and rejected_in_a_row < MAX_REJECTIONS_IN_A_ROW)
                rejected_in_a_row = rejected_in_a_row + 1 if outcome == "rejected" else 0
        finally:
            runner.close()


def _transfer_anchors(study) -> int:
    """Transferred trials whose latency was measured here (they calibrate the cost model)."""
    return sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
               if TRANSFERRED_FROM in t.user_attrs and t.user_attrs.get(LATENCY_SOURCE) == "measured")


def _run_one(session: SearchSession, runner, bar, may_reject: bool) -> str:
    """Ask, propose, evaluate (interruptible), record, tell. Returns done | failed | rejected."""
    study, cfg, baseline, predictor = session.study, session.cfg, session.baseline, session.predictor
    trial = study.ask()
    for key, value in owner_attrs().items():
        trial.set_user_attr(key, value)
    try:
        with get_heartbeat_thread(trial._trial_id, study._storage):
            known = trial.user_attrs.get(TRANSFERRED_QUALITY)  # quality transferred from another device's study
            plan = propose(trial, cfg, session.space, baseline, predictor, may_reject and known is None)
            if known is not None and cfg.transfer.latency == "predict" and _transfer_anchors(study) >= \
                    cfg.transfer.anchors:
                result = predicted(predictor, plan, baseline, known)
            else:
                with interruptible():
                    result = runner.evaluate(plan, baseline, trial.number, quality=known)
            values = record(trial, cfg, baseline, plan, result, predictor)
    except Rejected as exc:
        trial.set_user_attr(REJECTED, str(exc))
        study.tell(trial, state=TrialState.PRUNED)
        bar.trial_rejected(trial.number, str(exc))
        return "rejected"
    except (KeyboardInterrupt, WorkerStartError) as exc:  # the trial is abandoned and queued again
        requeue(study, trial, "interrupted (Ctrl-C / SIGTERM)" if isinstance(exc, KeyboardInterrupt) else str(exc))
        raise
    except Exception as exc:  # noqa: BLE001 - a failed candidate must not stop the study
        if storage_fault(exc):  # ... but a locked/full/read-only storage does (exit 2; retried on resume)
            raise
        reason = getattr(exc, "reason", None) or \
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        trial.set_user_attr(FAIL_REASON, reason)
        study.tell(trial, state=TrialState.FAIL)
        bar.trial_failed(trial.number, reason)
        return "failed"
    frozen = study.tell(trial, values)
    bar.trial_done(frozen, best_feasible(study))
    return "done"
