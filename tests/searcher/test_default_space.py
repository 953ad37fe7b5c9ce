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
    assert "int8_weights" not in params and "int8_weights: s8, u8" not in res.stdout + res.stderr  # eager PyTorch does not read it
    assert "attention" in params and "attention: sdpa, eager" in res.stdout + res.stderr  # eager PyTorch runs it


def test_default_space_searches_ort_int8_weights_where_ort_times(tmp_path, make_study, cli):
    path = make_study(space=None, search={"trials": 4}, device={"runtime": "onnxruntime", "threads": 1,
                                                                "seq_len": 32, "rounds": 4, "warmup": 1})
    res = cli("search", path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "int8_weights: s8, u8" in res.stdout + res.stderr
    study = optuna.load_study(study_name="study", storage=f"sqlite:///{tmp_path / 'study.db'}")
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    int8 = [t for t in done if 8 in t.user_attrs["plan"]["bits"]]
    assert int8 and all(t.params["int8_weights"] == t.user_attrs["plan"]["int8_weights"] for t in int8)
    assert all("attention" not in t.params and t.user_attrs["plan"]["attention"] is None for t in done)  # a graph
