"""The default space (no `space:` section) adapts to the study: without calibration data it
leaves out what needs data (Fisher, mask tuning, distillation) instead of refusing to run."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState


def test_default_space_without_calibration_runs(tmp_path, make_study, cli):
    path = make_study(space=None, search={"trials": 3, "seed_uniform": False},
                      data={"calibration": None})
    res = cli("search", path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "leaves out Fisher importance, mask tuning and distillation" in res.stdout + res.stderr
    study = optuna.load_study(study_name="study", storage=f"sqlite:///{tmp_path / 'study.db'}")
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(done) == 3
    for t in done:
        plan = t.user_attrs["plan"]
        assert plan["importance"] == "magnitude" and plan["recovery"] == "none" and plan["distill"]["steps"] == 0


def test_default_space_with_calibration_searches_recovery_and_distillation(tmp_path, make_study, cli):
    path = make_study(space=None, search={"trials": 1})
    res = cli("search", path)
    assert res.returncode == 0, res.stderr[-3000:]
    study = optuna.load_study(study_name="study", storage=f"sqlite:///{tmp_path / 'study.db'}")
    params = set().union(*(t.distributions for t in study.get_trials()))
    assert {"importance", "recovery", "distill_steps"} <= params
