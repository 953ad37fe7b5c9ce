"""Transfer to a new device: a study for device B reuses the quality results of a finished study
on device A (same model, task, data, space) and only times (or predicts) latency on B."""

from __future__ import annotations

import shutil
import subprocess
import sys

import optuna
import pytest
import yaml
from optuna.trial import TrialState

SOURCE_TRIALS = 5


@pytest.fixture(scope="module")
def _source_study(tmp_path_factory, study_writer):
    """Device A's finished study, searched once for the module (its folder is copied per test)."""
    folder = tmp_path_factory.mktemp("device-a")
    path = study_writer(folder, search={"trials": SOURCE_TRIALS, "prescreen": False})
    res = subprocess.run([sys.executable, "-m", "slimformer.searcher.cli", "search", str(path)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return folder


@pytest.fixture
def source(_source_study, tmp_path):
    """This test's copy of device A's study folder: (study file, its folder)."""
    shutil.copytree(_source_study, tmp_path, dirs_exist_ok=True)
    return tmp_path / "study.yaml"


def _trials(folder, name):
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{folder / (name + '.db')}")
    return [t for t in study.get_trials() if t.state == TrialState.COMPLETE]


def _device_b(path, folder, **transfer):
    """Device B: the same study file with another thread count, sequence length and a transfer section."""
    study = yaml.safe_load(path.read_text())
    study["device"] = {**study["device"], "seq_len": 48}
    study["transfer"] = {"source": "study.db", **transfer}
    out = folder / "b.yaml"
    out.write_text(yaml.safe_dump(study, sort_keys=False))
    return out


def test_transfer_reuses_quality_and_measures_latency(tmp_path, source, cli):
    path = source
    originals = {t.number: t for t in _trials(tmp_path, "study")}
    b = _device_b(path, tmp_path)
    res = cli("search", b, "--trials", SOURCE_TRIALS)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"transferring {SOURCE_TRIALS} finished trial(s)" in res.stdout + res.stderr
    moved = _trials(tmp_path, "b")
    assert len(moved) == SOURCE_TRIALS
    for t in moved:
        origin = originals[int(t.user_attrs["transferred_from"].split("#")[1])]
        assert t.params == origin.params
        assert t.user_attrs["quality"] == origin.user_attrs["quality"]  # reused, not re-evaluated
        assert t.user_attrs["latency_source"] == "measured"
        assert t.user_attrs["latency_ms"] > 0 and t.user_attrs["size_mb"] == origin.user_attrs["size_mb"]
    # device B's latency is its own: a longer sequence makes the uncompressed model slower
    study_b = optuna.load_study(study_name="b", storage=f"sqlite:///{tmp_path / 'b.db'}")
    study_a = optuna.load_study(study_name="study", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert study_b.user_attrs["device"]["seq_len"] == 48 != study_a.user_attrs["device"]["seq_len"]
    # the study then goes on searching on B as usual
    res = cli("search", b, "--trials", SOURCE_TRIALS + 2)
    assert res.returncode == 0, res.stderr[-3000:]
    new = [t for t in _trials(tmp_path, "b") if "transferred_from" not in t.user_attrs]
    assert len(new) == 2 and all("quality" in t.user_attrs for t in new)


def test_transfer_with_predicted_latency_measures_only_anchors(tmp_path, source, cli, monkeypatch):
    from slimformer.searcher.cost.profile import default_profile_path, profile_device, save_profile

    monkeypatch.setenv("SLIMFORMER_CACHE", str(tmp_path / "cache"))
    profile = profile_device(1, hidden_sizes=(64,), quick=True, tokens=(48,), head_dims=(16,), progress=False)
    save_profile(profile, default_profile_path(1, "eager"))  # device B's profile
    b = _device_b(source, tmp_path, latency="predict", anchors=2)
    res = cli("search", b, "--trials", SOURCE_TRIALS)
    assert res.returncode == 0, res.stderr[-3000:]
    sources = [t.user_attrs["latency_source"] for t in sorted(_trials(tmp_path, "b"), key=lambda t: t.number)]
    assert sources == ["measured"] * 2 + ["predicted"] * (SOURCE_TRIALS - 2)
    rep = cli("report", b, "--json", "--no-rescore")
    assert rep.returncode == 0, rep.stderr


def test_transfer_refuses_another_space(tmp_path, source, cli, expect_user_error):
    b = _device_b(source, tmp_path)
    study = yaml.safe_load(b.read_text())
    study["space"]["heads"] = {"choices": [2, 4]}
    b.write_text(yaml.safe_dump(study))
    expect_user_error(cli("search", b), "search space differs")
    assert not (tmp_path / "b.db").exists() or not _trials(tmp_path, "b")


def test_transfer_from_missing_storage(tmp_path, make_study, cli, expect_user_error):
    path = make_study()
    expect_user_error(cli("search", path, "--transfer-from", tmp_path / "nowhere.db"), "no study storage")
