"""Stale trials: a trial left RUNNING by a dead process is failed and its plan queued again,
even when the process died between creating the trial and labelling it with its owner."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import optuna
from optuna.trial import TrialState
from slimformer.searcher.study.owners import fail_stale_trials, register_owner


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _study(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s")


def test_unlabelled_trial_of_a_dead_owner_is_failed_and_requeued(tmp_path):
    study = _study(tmp_path)
    study.set_user_attr(f"owner:{socket.gethostname()}:{_dead_pid()}", 1)
    study.enqueue_trial({"x": 3}, user_attrs={"seeded": True})
    orphan = study.ask()  # popped from the queue, then the process "died" before labelling it
    assert fail_stale_trials(study, log=lambda m: None) == [orphan.number]
    trials = study.get_trials()
    assert trials[orphan.number].state == TrialState.FAIL
    assert "stale" in trials[orphan.number].user_attrs["fail_reason"]
    queued = [t for t in trials if t.state == TrialState.WAITING]
    assert len(queued) == 1 and queued[0].system_attrs["fixed_params"] == {"x": 3}
    assert queued[0].user_attrs == {"seeded": True, "retry_of": orphan.number}


def test_unlabelled_trial_of_a_live_owner_is_left_alone(tmp_path):
    study = _study(tmp_path)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        study.set_user_attr(f"owner:{socket.gethostname()}:{live.pid}", 1)
        study.ask()
        assert fail_stale_trials(study, log=lambda m: None) == []
        study.set_user_attr("owner:some-other-host:1", 1)  # another host may still be working
        live.kill()
        live.wait()
        assert fail_stale_trials(study, log=lambda m: None) == []
    finally:
        live.kill()


def test_labelled_trial_of_a_dead_process(tmp_path):
    study = _study(tmp_path)
    register_owner(study)
    t = study.ask()
    t.suggest_int("x", 0, 10)
    t.set_user_attr("host", socket.gethostname())
    t.set_user_attr("pid", _dead_pid())
    assert fail_stale_trials(study, log=lambda m: None) == [t.number]
    assert os.getpid() in [int(k.split(":")[2]) for k in study.user_attrs if k.startswith("owner:")]
