"""Storage faults: a locked SQLite file, a read-only folder, a full disk, a journal whose last
record was cut off, a study written by a newer slimformer. Each gives one clear line (exit 2),
writes nothing half, and leaves the stored trials readable by `slimformer report`."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading

import optuna
import pytest
from optuna.trial import TrialState

TRIALS = 2


def _cli(*args, env=None, preexec_fn=None, prefix=(), timeout=300):
    return subprocess.run([*prefix, sys.executable, "-m", "slimformer.searcher.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
                          preexec_fn=preexec_fn)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, study_writer):
    """A finished 2-trial study in SQLite (study.db) and in a journal (study.journal), run once."""
    base = tmp_path_factory.mktemp("finished")
    env = {"SLIMFORMER_CACHE": str(base / "cache")}
    path = study_writer(base, search={"trials": TRIALS})
    for extra in ((), ("--storage", base / "study.journal")):
        res = _cli("search", path, *extra, env=env)
        assert res.returncode == 0, res.stderr[-3000:]
    return base


@pytest.fixture
def study_dir(finished, tmp_path):
    """A private copy of the finished studies."""
    target = tmp_path / "s"
    shutil.copytree(finished, target, ignore=shutil.ignore_patterns("cache"))
    # the study file names its data relative to itself; the copy has its own data folder
    return target


def _trials(url):
    return optuna.load_study(study_name="study", storage=url).get_trials(deepcopy=False)


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_readable(study_dir, *extra, at_least=TRIALS):
    rep = _cli("report", study_dir / "study.yaml", "--json", "--no-rescore", *extra)
    assert rep.returncode == 0, rep.stderr[-2000:]
    assert json.loads(rep.stdout)["n_complete"] >= at_least


def test_locked_sqlite_is_a_clear_error(study_dir, expect_user_error):
    db = study_dir / "study.db"
    before = _digest(db)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process writing, for longer than we wait
    try:
        res = _cli("search", study_dir / "study.yaml", "--trials", TRIALS + 1, env={"SLIMFORMER_SQLITE_TIMEOUT": "1"})
        expect_user_error(res, "locked by another process")
        res = _cli("report", study_dir / "study.yaml", "--no-rescore", env={"SLIMFORMER_SQLITE_TIMEOUT": "1"})
        expect_user_error(res, "locked by another process")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert _digest(db) == before
    _assert_readable(study_dir)


def test_lock_released_in_time_is_waited_for(study_dir):
    db = study_dir / "study.db"
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    timer = threading.Timer(2.0, lambda: (holder.execute("ROLLBACK"), holder.close()))
    timer.start()
    try:
        _assert_readable(study_dir)  # waits (default 30 s) instead of failing
    finally:
        timer.join()


def _unshare_works() -> bool:
    if not shutil.which("unshare"):
        return False
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        res = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount --bind -o ro '{d}' '{d}' && ! touch '{d}/x'"],
                             capture_output=True)
    return res.returncode == 0


def test_read_only_storage_folder(study_dir, expect_user_error, requires):
    """A real read-only file system (a read-only bind mount in a private mount namespace:
    chmod does not stop root)."""
    requires(_unshare_works(), "needs unshare -rm (user + mount namespaces) for a read-only bind")
    db = study_dir / "study.db"
    before = _digest(db)
    d = str(study_dir)
    cmd = f"mount --bind -o ro '{d}' '{d}' && exec \"$@\""
    prefix = ("unshare", "-rm", "sh", "-c", cmd, "sh")
    res = _cli("search", study_dir / "study.yaml", "--trials", TRIALS + 1, prefix=prefix)
    expect_user_error(res, "not writable")
    res = _cli("report", study_dir / "study.yaml", "--json", "--no-rescore", prefix=prefix)
    assert res.returncode == 0 and f'"n_complete": {TRIALS}' in res.stdout, res.stderr[-2000:]
    assert _digest(db) == before


@pytest.mark.slow
def test_full_disk_while_searching(study_dir, expect_user_error):
    """The storage cannot grow (a file-size limit, which stops root too: the kernel fails the
    write with EFBIG, as a full disk fails it with ENOSPC)."""
    db = study_dir / "study.db"
    size = db.stat().st_size

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    res = _cli("search", study_dir / "study.yaml", "--trials", TRIALS + 3, preexec_fn=limit)
    expect_user_error(res, "disk")
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    _assert_readable(study_dir)
    res = _cli("search", study_dir / "study.yaml", "--trials", TRIALS + 1)  # space again: resumes
    assert res.returncode == 0, res.stderr[-3000:]
    complete = [t for t in _trials(f"sqlite:///{db}") if t.state == TrialState.COMPLETE]
    assert len(complete) >= TRIALS + 1


@pytest.mark.slow
def test_truncated_journal(study_dir):
    journal = study_dir / "study.journal"
    raw = journal.read_bytes()
    last_start = raw.rstrip(b"\n").rfind(b"\n") + 1
    cut = last_start + (len(raw) - last_start) // 2
    journal.write_bytes(raw[:cut])  # the last record cut in half, as by a crash mid-write
    # every complete record is read; the cut one may be the last trial's completion
    _assert_readable(study_dir, "--storage", journal, at_least=TRIALS - 1)
    res = _cli("search", study_dir / "study.yaml", "--storage", journal, "--trials", TRIALS + 1)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "cut off" in res.stderr
    assert (study_dir / "study.journal.partial").read_bytes() == raw[last_start:cut]
    states = [t.state for t in _trials(optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))]
    assert states.count(TrialState.COMPLETE) >= TRIALS + 1


def test_corrupt_journal_middle_is_a_clear_error(study_dir, expect_user_error):
    journal = study_dir / "study.journal"
    lines = journal.read_bytes().splitlines(keepends=True)
    lines[3] = lines[3][: len(lines[3]) // 2] + b"\n"
    journal.write_bytes(b"".join(lines))
    before = _digest(journal)
    res = _cli("search", study_dir / "study.yaml", "--storage", journal, "--trials", TRIALS + 1)
    expect_user_error(res, "journal")
    assert _digest(journal) == before


def test_study_from_a_newer_slimformer(study_dir, expect_user_error):
    db = study_dir / "study.db"
    url = f"sqlite:///{db}"
    optuna.load_study(study_name="study", storage=url).set_user_attr("schema", 99)
    before = _digest(db)
    expect_user_error(_cli("search", study_dir / "study.yaml", "--trials", TRIALS + 1), "newer slimformer")
    assert _digest(db) == before
    _assert_readable(study_dir)


def test_not_a_database(study_dir, expect_user_error):
    (study_dir / "study.db").write_bytes(b"this is not sqlite" * 100)
    expect_user_error(_cli("report", study_dir / "study.yaml", "--no-rescore"), "storage")


def _open_new(url, results):
    from slimformer.searcher.study.storage import open_storage

    try:
        open_storage(url)
        results.put("ok")
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        results.put(f"{type(exc).__name__}: {exc}")


def test_processes_opening_a_new_sqlite_storage_at_once(tmp_path):
    """A search creating its study while `slimformer report` (or a second process) opens the same
    new file: Optuna's unlocked schema creation makes one of them fail ("table already exists",
    UNIQUE alembic_version) unless the open is retried. Plain RDBStorage fails this in most rounds."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    for round_ in range(3):
        url = f"sqlite:///{tmp_path / f'new{round_}.db'}"
        results = ctx.Queue()
        procs = [ctx.Process(target=_open_new, args=(url, results)) for _ in range(6)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        got = [results.get(timeout=5) for _ in procs]
        assert got == ["ok"] * 6, got
