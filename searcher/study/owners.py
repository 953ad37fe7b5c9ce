"""Who runs a trial, and what becomes of a trial whose process died.

Every trial carries its process's host and pid (`owner_attrs`), and every process that runs a
study notes itself in the study (`register_owner`): a later run tells a crashed trial from a
live one (on a database server, also by its stopped heartbeat) and queues the dead one's plan
again (`fail_stale_trials`, through `records.requeue`).
"""

from __future__ import annotations

import os
import socket

import optuna
from optuna.trial import TrialState

from .records import HOST, PID, requeue
from .storage import HEARTBEAT_GRACE_BEATS

__all__ = ["owner_attrs", "register_owner", "fail_stale_trials"]


def owner_attrs() -> dict:
    """Who runs a trial: lets a later run tell a crashed trial from a live one."""
    return {HOST: socket.gethostname(), PID: os.getpid()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def register_owner(study: optuna.Study) -> None:
    """Note this process in the study, so that a trial it leaves with no owner attributes (it
    was killed between creating the trial and labelling it) is recognised as stale later."""
    study.set_user_attr(f"owner:{socket.gethostname()}:{os.getpid()}", 1)


def _owners(study: optuna.Study) -> list[tuple[str, int]]:
    out = []
    for key in study.user_attrs:
        parts = key.split(":")
        if len(parts) == 3 and parts[0] == "owner" and parts[2].isdigit():
            out.append((parts[1], int(parts[2])))
    return out


def _heartbeat_stale(study: optuna.Study) -> set[int]:
    """Ids of the RUNNING trials whose heartbeat stopped (a database server's storage only)."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    storage = study._storage
    if not is_heartbeat_enabled(storage):
        return set()
    return set(storage._get_stale_trial_ids(study._study_id))


def fail_stale_trials(study: optuna.Study, log=print) -> list[int]:
    """Mark RUNNING trials whose process on this host is gone, or whose heartbeat stopped on a
    database server (any host: its machine crashed), as FAIL and queue their parameters again,
    so a killed trial is retried with the same plan. Returns their numbers.

    A RUNNING trial without owner attributes was created by a process killed right after
    `ask`: it is stale when every process that ever ran this study is on this host and dead."""
    host = socket.gethostname()
    retried = []
    unlabelled_stale = None
    silent = _heartbeat_stale(study)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner_host, pid = t.user_attrs.get(HOST), t.user_attrs.get(PID)
        if t._trial_id in silent:
            pass
        elif owner_host is None and pid is None:
            if unlabelled_stale is None:
                unlabelled_stale = all(h == host and (not _alive(p) or p == os.getpid()) for h, p in _owners(study))
            if not unlabelled_stale:
                continue
        elif owner_host != host or pid is None or (_alive(pid) and pid != os.getpid()):
            continue
        reason = (f"stale: no heartbeat from {owner_host or 'its host'} for {HEARTBEAT_GRACE_BEATS} intervals "
                  "(its machine crashed or lost the database)" if t._trial_id in silent
                  else "stale: its process died (killed or crashed)")
        try:
            requeue(study, t, reason)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process failed it (or it finished) first
        retried.append(t.number)
        log(f"trial {t.number} was left running by a process that died"
            + (f" on {owner_host} (no heartbeat)" if t._trial_id in silent else "") + "; marked failed and queued again")
    return retried
