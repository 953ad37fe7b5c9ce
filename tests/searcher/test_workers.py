"""`search --workers K`: several processes on one journal file or PostgreSQL study stop at the
total with every trial intact; a killed worker's trial is retried; Ctrl-C stops them all;
unsafe storages are refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import optuna
import pytest
from optuna.trial import TrialState
from slimformer.methods import Plan
from slimformer.searcher.study.storage import open_storage


def _study(url, name="study"):
    return optuna.load_study(study_name=name, storage=open_storage(url, read_only=True))


def _wait_running(url, name="study", deadline=240, number=None):
    """The first trial seen RUNNING with its plan drawn (trial `number`, when given)."""
    end = time.time() + deadline
    while time.time() < end:
        time.sleep(0.2)
        try:
            trials = _study(url, name).get_trials(deepcopy=False)
        except Exception:  # noqa: BLE001 - not created yet
            continue
        running = [t for t in trials if t.state == TrialState.RUNNING and "plan" in t.user_attrs and "pid" in t.user_attrs
                   and number in (None, t.number)]
        if running:
            return running[0]
    raise AssertionError("no trial started running")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _check_intact(study, target, workers):
    """No lost or duplicate trials, each finished trial's plan and values stored together."""
    trials = study.get_trials()
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials)))  # no gaps, no duplicates
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert target <= len(complete) <= target + workers - 1
    for t in complete:
        a = t.user_attrs
        assert Plan.from_dict(a["plan"]).to_dict() == a["plan"]
        assert t.values == [a["quality"], a["latency_ms"]]
        assert t.constraints == a["constraints"] and set(t.constraints) == {"speedup"}
    return complete


def test_sqlite_refused_for_parallel_workers(make_study, cli, expect_user_error):
    path = make_study()
    expect_user_error(cli("search", path, "--workers", "2"), "SQLite", "--workers 2", ".journal", "postgresql")
    assert not (path.parent / "study.db").exists()  # refused before anything was written
    expect_user_error(cli("search", path, "--address", "auto"), "--backend ray")
    expect_user_error(cli("search", path, "--workers", "0", "--storage", path.parent / "s.journal"), "--workers")


def test_ray_missing_is_a_clear_error(make_study, monkeypatch):
    import importlib.util

    from slimformer.searcher.backends.workers import check_scale_out, with_scale_out
    from slimformer.searcher.config import load_study_config
    from slimformer.searcher.errors import UserError

    cfg = with_scale_out(load_study_config(make_study()), None, "ray", None)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(UserError, match=r"pip install 'slimformer\[ray\]'"):
        check_scale_out(cfg, "sqlite:///x.db")


def test_workers_on_journal_stop_at_the_total(make_study, cli):
    # search.worker_threads: 1 overrides device.threads // workers (6 // 3 = 2) for building and scoring;
    # every measurement runs at the study's device.threads (6), one at a time (the timing lock)
    path = make_study(search={"trials": 6, "worker_threads": 1}, device={"threads": 6}, budget={"speedup": 1.1})
    url = str(path.parent / "study.journal")
    res = cli("search", path, "--workers", 3, "--storage", url)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "3 workers" in res.stderr and "building and scoring at 1 torch thread(s) each" in res.stderr
    assert "every latency measurement at the study's 6 thread(s)" in res.stderr
    for i in range(3):  # each worker predicts for, and times on, the device the study names
        assert f"[worker {i}] no device profile for this CPU/6 threads/eager" in res.stderr
    complete = _check_intact(_study(url), 6, 3)
    assert len({t.user_attrs["pid"] for t in complete}) >= 2  # the work was shared
    assert {t.user_attrs["timing_threads"] for t in complete} == {6}
    assert all(t.user_attrs["timing_wait_s"] >= 0 for t in complete)
    rep = cli("report", path, "--storage", url, "--json", "--no-rescore")
    assert rep.returncode == 0, rep.stderr[-2000:]
    assert json.loads(rep.stdout)["n_trials"] == len(complete)


def test_workers_on_postgres(make_study, cli, postgres_url):
    name = f"pg-{uuid.uuid4().hex[:8]}"
    path = make_study(search={"trials": 6, "study_name": name}, budget={"speedup": 1.1})
    res = cli("search", path, "--workers", 2, "--storage", postgres_url)
    assert res.returncode == 0, res.stderr[-3000:]
    complete = _check_intact(_study(postgres_url, name), 6, 2)
    assert len({t.user_attrs["pid"] for t in complete}) == 2
    rep = cli("report", path, "--storage", postgres_url, "--json", "--no-rescore")
    assert rep.returncode == 0, rep.stderr[-2000:]


def test_killed_worker_trial_is_retried(make_study, cli, start):
    path = make_study(search={"trials": 5}, budget={"speedup": 1.1})
    url = str(path.parent / "study.journal")
    proc = start(path, "--workers", 2, "--storage", url, hang=1)
    victim = _wait_running(url, number=1)
    os.kill(victim.user_attrs["pid"], signal.SIGKILL)
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    assert "ended with exit code -9" in err
    trials = _study(url).get_trials()
    killed = trials[victim.number]
    assert killed.state == TrialState.FAIL and "stale" in killed.user_attrs["fail_reason"]
    retry = [t for t in trials if t.user_attrs.get("retry_of") == victim.number]
    # the retry runs the same plan: every value the killed trial had drawn (a snapshot taken while it
    # ran may hold only the first few), and the whole plan when it was a queued one
    assert retry and victim.params.items() <= retry[0].params.items() and retry[0].state == TrialState.COMPLETE
    _check_intact(_study(url), 5, 2)


def test_ctrl_c_stops_every_worker(make_study, cli, start):
    path = make_study(search={"trials": 6}, budget={"speedup": 1.1})
    url = str(path.parent / "study.journal")
    proc = start(path, "--workers", 2, "--storage", url, hang=1)
    running = _wait_running(url, number=1)
    proc.send_signal(signal.SIGTERM)  # reaches the parent only: it must stop the workers itself
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "Resume with the same command" in err
    trials = _study(url).get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert not any(_alive(t.user_attrs["pid"]) for t in trials if "pid" in t.user_attrs)
    interrupted = trials[running.number]
    assert interrupted.state == TrialState.FAIL and interrupted.user_attrs["retried"]
    res = cli("search", path, "--workers", 2, "--storage", url)
    assert res.returncode == 0, res.stderr[-3000:]
    _check_intact(_study(url), 6, 2)


def test_ray_stays_optional():
    """Importing the search, the CLI and the workers module never imports Ray."""
    code = ("import sys, slimformer.searcher.search, slimformer.searcher.cli, slimformer.searcher.backends.workers; "
            "print('ray' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "False", res.stderr[-2000:]
