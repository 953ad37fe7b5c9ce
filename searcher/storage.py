"""Optuna storages: SQLite next to the study (default), Optuna's journal file, or any RDB URL.

Every storage is checked before anything is written, so a bad URL is one clear error.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import optuna
from optuna.trial import TrialState

from .errors import UserError

__all__ = ["storage_url", "storage_file", "open_storage", "check_storage", "fail_stale_trials", "owner_attrs"]


def storage_url(value: str | None, study_path: Path | None, name: str) -> str:
    """The storage a study uses: the given URL/journal path, or `<study dir>/<name>.db`."""
    if value:
        return value
    folder = study_path.parent if study_path else Path.cwd()
    return f"sqlite:///{folder / (name + '.db')}"


def _journal_path(url: str) -> Path | None:
    if url.startswith("journal:"):
        return Path(url[len("journal:"):])
    if "://" not in url and url.endswith((".journal", ".log", ".jsonl")):
        return Path(url)
    return None


def open_storage(url: str, read_only: bool = False) -> optuna.storages.BaseStorage:
    """Open (and for writing, create) the storage behind `url`, or raise UserError."""
    check_storage(url, read_only)
    journal = _journal_path(url)
    if journal is not None:
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        try:
            backend = JournalFileBackend(str(journal), lock_obj=JournalFileOpenLock(str(journal)))
            return optuna.storages.JournalStorage(backend)
        except Exception as exc:  # noqa: BLE001 - corrupt journal files raise many types
            raise UserError(f"cannot read journal storage {journal}: {str(exc).splitlines()[0]}") from None
    heartbeat = {}
    if not url.startswith("sqlite"):
        # other hosts' crashed trials: Optuna's heartbeat marks them failed and queues a retry
        heartbeat = {"heartbeat_interval": 30, "grace_period": 120,
                     "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url), **heartbeat)
    except Exception as exc:  # noqa: BLE001 - sqlalchemy/driver errors
        raise UserError(f"cannot open storage {_redact(url)}: {str(exc).splitlines()[0]}") from None


def storage_file(url: str) -> Path | None:
    """The local file behind a SQLite URL or a journal storage (None for a database server)."""
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):])
    return _journal_path(url)


def check_storage(url: str, read_only: bool = False) -> None:
    """Check that `url` can be used, writing nothing; raise UserError if not."""
    path = storage_file(url)
    if path is None:
        if "://" not in url:
            raise UserError(f"storage {url!r} is neither a URL (sqlite:///..., postgresql://...) nor a .journal file")
        _check_reachable(url)
        return
    if read_only and not path.is_file():
        raise UserError(f"study storage not found: {path} (has the search run yet?)")
    if not path.parent.is_dir():
        raise UserError(f"storage folder does not exist: {path.parent}")
    if not read_only and not os.access(path.parent, os.W_OK):
        raise UserError(f"storage folder is not writable: {path.parent}")


def _engine_kwargs(url: str) -> dict:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 30}}
    return {"pool_pre_ping": True}


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def _check_reachable(url: str) -> None:
    """Connect once with a short timeout so an unreachable server fails fast and cleanly."""
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(url, connect_args=_connect_timeout(url))
        with engine.connect():
            pass
        engine.dispose()
    except ModuleNotFoundError as exc:
        raise UserError(f"storage {_redact(url)} needs the database driver {exc.name!r}: pip install it") from None
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"storage {_redact(url)} is unreachable: {first}") from None


def _connect_timeout(url: str) -> dict:
    if url.startswith(("postgresql", "postgres")):
        return {"connect_timeout": 5}
    if url.startswith("mysql"):
        return {"connect_timeout": 5}
    return {}


def owner_attrs() -> dict:
    """Who runs a trial: lets a later run tell a crashed trial from a live one."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_stale_trials(study: optuna.Study, log=print) -> list[int]:
    """Mark RUNNING trials whose process on this host is gone as FAIL and queue their
    parameters again, so a killed trial is retried with the same plan. Returns their numbers."""
    host = socket.gethostname()
    retried = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner_host, pid = t.user_attrs.get("host"), t.user_attrs.get("pid")
        if owner_host != host or pid is None or (_alive(pid) and pid != os.getpid()):
            continue
        study._storage.set_trial_user_attr(t._trial_id, "fail_reason", "stale: its process died (killed or crashed)")
        study._storage.set_trial_user_attr(t._trial_id, "retried", bool(t.params))
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        if t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        retried.append(t.number)
        log(f"trial {t.number} was left running by a process that died; marked failed and queued again")
    return retried
