"""Isolated trials: a worker that hangs, segfaults, grows without bound or raises is recorded
as a failed trial with its reason, and the study completes."""

from __future__ import annotations

import os
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState
from slimformer.searcher.backends.faults import parse_faults
from slimformer.searcher.backends.isolate import AUTO_ISOLATE_TRIALS, _died, isolation_enabled
from slimformer.searcher.config import load_study_config


def test_parse_faults():
    assert parse_faults("hang:3, segv:5,oom:7,bogus:1,raise:x") == {3: "hang", 5: "segv", 7: "oom"}
    assert parse_faults("") == {}


def test_death_reasons():
    assert _died(-11) == "worker died: signal 11 (SIGSEGV)"
    assert "out of memory" in _died(-9)
    assert _died(3) == "worker exited with code 3"


def test_isolate_auto_and_flags():
    auto = load_study_config(data={})
    assert auto.search.isolate == "auto"
    assert not isolation_enabled(auto, AUTO_ISOLATE_TRIALS - 1) and isolation_enabled(auto, AUTO_ISOLATE_TRIALS)
    assert isolation_enabled(load_study_config(data={"search": {"isolate": True}}), 1)
    assert not isolation_enabled(load_study_config(data={"search": {"isolate": False}}), 1000)


def test_bad_limits_are_user_errors(expect_user_error, cli, make_study):
    expect_user_error(cli("search", make_study(search={"trial_memory_mb": 10})), "search.trial_memory_mb")
    expect_user_error(cli("search", make_study(search={"trial_timeout": -1})), "search.trial_timeout")
    expect_user_error(cli("search", make_study(search={"isolate": "sometimes"})), "search.isolate")


@pytest.mark.slow
def test_broken_trials_are_recorded_and_the_study_completes(tmp_path, make_study):
    path = make_study(search={"trials": 6, "isolate": True, "trial_timeout": 10, "trial_memory_mb": 1500})
    env = {**os.environ, "SLIMFORMER_FAULT": "hang:1,segv:2,oom:3,raise:4"}
    res = subprocess.run([sys.executable, "-m", "slimformer.searcher.cli", "search", str(path)],
                         capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    trials = optuna.load_study(study_name="study", storage=f"sqlite:///{path.parent / 'study.db'}").get_trials()
    reasons = {t.number: t.user_attrs.get("fail_reason") for t in trials if t.state == TrialState.FAIL}
    assert reasons[1] == "timed out after 10 s"
    assert reasons[2] == "worker died: signal 11 (SIGSEGV)"
    assert reasons[3].startswith("exceeded the 1500 MB memory limit")
    assert reasons[4] == "RuntimeError: injected fault"
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 2  # trials 0 and 5
    assert res.stderr.count("isolated trial worker started") == 4  # first + after each killed worker
    assert "trials finished" in res.stdout
