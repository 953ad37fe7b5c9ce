"""Optuna storages: SQLite next to the study (default), Optuna's journal file, or any RDB URL.

Every storage is checked before anything is written, so a bad URL is one clear error.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from pathlib import Path

import optuna

from ..errors import UserError

__all__ = ["storage_url", "storage_file", "open_storage", "check_storage", "storage_fault", "repair_journal_tail",
           "sqlite_timeout", "heartbeat_interval", "HEARTBEAT_GRACE_BEATS"]


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


INIT_ATTEMPTS = 6  # opens of a new database tried before a schema-creation collision is reported


def open_storage(url: str, read_only: bool = False) -> optuna.storages.BaseStorage:
    """Open (and for writing, create) the storage behind `url`, or raise UserError."""
    check_storage(url, read_only)
    journal = _journal_path(url)
    if journal is not None:
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        if not read_only:
            cut = repair_journal_tail(journal)
            if cut:
                print(f"slimformer: the journal {journal} ended with a record cut off by a crash ({cut} bytes); "
                      f"it was set aside in {journal}.partial and the complete records are used", file=sys.stderr)
        try:
            backend = JournalFileBackend(str(journal), lock_obj=JournalFileOpenLock(str(journal)))
            return optuna.storages.JournalStorage(backend)
        except Exception as exc:  # noqa: BLE001 - corrupt journal files raise many types
            raise UserError(f"cannot read journal storage {journal}: {str(exc).splitlines()[0]}") from None
    heartbeat = {}
    if not url.startswith("sqlite"):
        # running trials beat; fail_stale_trials finds other hosts' crashed ones by a stopped heartbeat
        interval = heartbeat_interval()
        heartbeat = {"heartbeat_interval": interval, "grace_period": HEARTBEAT_GRACE_BEATS * interval}
    for attempt in range(1, INIT_ATTEMPTS + 1):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url), **heartbeat)
        except Exception as exc:  # noqa: BLE001 - sqlalchemy/driver errors
            if attempt == INIT_ATTEMPTS or not _schema_race(exc):
                fault = storage_fault(exc)
                raise UserError(f"cannot open storage {_redact(url)}: {fault or str(exc).splitlines()[0]}") from None
            time.sleep(0.1 * attempt)


def _schema_race(exc: Exception) -> bool:
    """Optuna creates the tables and the version row of a new database without a lock, so two
    processes opening a new storage at once (a search and `slimformer report`, two workers)
    collide: one gets "table ... already exists" or a UNIQUE failure on alembic_version. The
    other's schema is complete a moment later, so opening again succeeds."""
    text = str(exc)
    return "already exists" in text or ("UNIQUE" in text and "alembic_version" in text) or \
        ("duplicate key" in text and ("alembic_version" in text or "pg_type" in text))


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


def sqlite_timeout() -> float:
    """Seconds a SQLite storage locked by another process is waited for ($SLIMFORMER_SQLITE_TIMEOUT, 30)."""
    try:
        return max(0.0, float(os.environ.get("SLIMFORMER_SQLITE_TIMEOUT", 30)))
    except ValueError:
        return 30.0


HEARTBEAT_GRACE_BEATS = 4  # a running trial with no heartbeat for this many intervals is stale


def heartbeat_interval() -> int:
    """Seconds between a running trial's heartbeats on a database server
    ($SLIMFORMER_HEARTBEAT_INTERVAL, default 30); it is stale after HEARTBEAT_GRACE_BEATS of them."""
    try:
        return max(1, int(os.environ.get("SLIMFORMER_HEARTBEAT_INTERVAL", 30)))
    except ValueError:
        return 30


def _engine_kwargs(url: str) -> dict:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": sqlite_timeout()}}
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


def repair_journal_tail(path: Path) -> int:
    """A journal whose last record was cut off (a crash or a full disk while appending) would
    glue that half record to the next one appended, corrupting the file. Under the journal's
    lock, move the incomplete tail to `<journal>.partial` and truncate the journal to its last
    complete record. Returns the number of bytes set aside (0: the journal was complete)."""
    from optuna.storages.journal import JournalFileOpenLock
    from optuna.storages.journal._file import get_lock_file

    if not path.is_file() or path.stat().st_size == 0:
        return 0
    with get_lock_file(JournalFileOpenLock(str(path))):
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - 1))
            if f.read(1) == b"\n":
                return 0
            keep, step = 0, 1 << 16
            pos = size
            while pos > 0 and not keep:  # find the last newline, reading backwards
                start = max(0, pos - step)
                f.seek(start)
                chunk = f.read(pos - start)
                i = chunk.rfind(b"\n")
                if i >= 0:
                    keep = start + i + 1
                pos = start
            f.seek(keep)
            tail = f.read()
            with open(f"{path}.partial", "ab") as side:
                side.write(tail)
                side.flush()
                os.fsync(side.fileno())
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
            return len(tail)


_FAULT_ERRNOS = {
    errno.ENOSPC: "the disk holding it is full", errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file size limit was reached", errno.EROFS: "it is on a read-only file system",
    errno.EACCES: "permission denied", errno.EPERM: "permission denied",
}


def storage_fault(exc: BaseException) -> str | None:
    """One clear line for a storage that is locked, read-only or full (searched along the
    exception's causes); None for anything else."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(getattr(exc, "orig", None) or exc).lower()
        what = None
        if "database is locked" in text:
            what = (f"the study storage is locked by another process (waited {sqlite_timeout():.0f} s; "
                    "set SLIMFORMER_SQLITE_TIMEOUT to wait longer)")
        elif "readonly database" in text or "read-only file system" in text:
            what = "the study storage is read-only"
        elif "database or disk is full" in text or "disk i/o error" in text:
            what = "the study storage could not be written: the disk is full or failing"
        elif "file is not a database" in text or "database disk image is malformed" in text:
            what = "the study storage is not a readable SQLite database (damaged or another file)"
        elif isinstance(exc, OSError) and exc.errno in _FAULT_ERRNOS:
            name = f" {exc.filename}" if exc.filename else ""
            what = f"cannot use{name}: {_FAULT_ERRNOS[exc.errno]}"
        if what:
            return what + "; the trials already stored are intact (fix this and run the command again)"
        exc = exc.__cause__ or exc.__context__
    return None
