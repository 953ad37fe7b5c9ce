"""`slimformer finish` on the tiny model: final models trained, scored on validation and test,
re-timed and stored apart from the search (its sampler and trial counts never see them),
exported by `export --final N` and preferred by `export --best`; resumed after a real kill -9;
bad input refused with one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import optuna
import pytest
from slimformer.searcher.finish import FINISHING

pytestmark = pytest.mark.slow  # CLI runs of search and finish (minutes on a busy machine)

SPLIT = {"validation": "data/sts-val-500.tsv", "test": "data/sts-dev.tsv", "calibration": "data/sts-train-rest.tsv"}


@pytest.fixture(scope="module")
def searched(tmp_path_factory, study_writer):
    """A finished 4-trial search of the tiny model on the clean STS-B split (no budget: all feasible)."""
    from conftest import run_cli

    folder = tmp_path_factory.mktemp("searched")
    path = study_writer(folder, data=SPLIT, device={"threads": 1, "seq_len": 32, "rounds": 4, "max_rounds": 8,
                                                    "warmup": 1})
    res = run_cli("search", path)
    assert res.returncode == 0, res.stderr[-2000:]
    return folder


@pytest.fixture
def study(searched, tmp_path):
    """A private copy of the searched study folder."""
    dst = tmp_path / "s"
    shutil.copytree(searched, dst)
    return dst / "study.yaml"


def _trials(path, name):
    storage = f"sqlite:///{path.parent / 'study.db'}"
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def test_finish_stores_final_models_apart_and_export_takes_them(study, cli):
    before = len(_trials(study, "study"))
    res = cli("finish", study, "--top", "2", "--steps", "12")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "expected at most" in res.stderr and "distill step 12/12" in res.stderr
    finals = _trials(study, "study:final")
    assert len(finals) == 2 and all(t.state.name == "COMPLETE" for t in finals)
    linked = {t.user_attrs["search_trial"] for t in finals}
    search = {t.number: t for t in _trials(study, "study")}
    assert linked <= set(search)
    for t in finals:
        a = t.user_attrs
        assert a["steps"] == 12 and a["plan"]["distill"]["steps"] == 12 and a["plan"]["distill"]["lr"] == FINISHING["sentence-similarity"]["lr"]
        assert a["test_quality"] is not None and a["quality"] == t.value
        assert (study.parent / "study-final" / f"trial-{a['search_trial']}" / "manifest.json").is_file()
    assert "valid" in res.stdout and "test" in res.stdout
    # the search never sees them: same trials, and a resumed search counts only its own
    assert len(search) == before
    res = cli("search", study)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"{before}/4 trials finished" in res.stdout and len(_trials(study, "study")) == before
    # the report shows them next to the front, with the test split
    rep = json.loads(cli("report", study, "--json").stdout)
    assert {r["search_trial"] for r in rep["final"]} == linked
    assert rep["baseline"]["quality_test"] is not None and rep["pareto"][0]["quality_test"] is not None
    # export --best takes the best final model that holds (no budget: every timed one holds)
    best = max(finals, key=lambda t: t.value).user_attrs["search_trial"]
    res = cli("export", study, "--best", "--out", study.parent / "best")
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"final model of trial {best}" in res.stdout
    meta = json.loads((study.parent / "best" / "slimformer.json").read_text())
    assert meta["metrics"]["final_of_trial"] == best
    timed = meta["metrics"]["retimed"]  # finish's re-timing travels with the export, interval included
    assert timed["low"] <= timed["speedup"] <= timed["high"] and timed["holds"] is True
    other = (linked - {best}).pop()
    res = cli("export", study, "--final", other, "--out", study.parent / "other")
    assert res.returncode == 0 and f"final model of trial {other}" in res.stdout
    res = cli("evaluate", study.parent / "other", "--study", study, "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["plan"]["distill"]["steps"] == 12


def test_finish_resumes_after_kill_9(study, cli):
    args = [sys.executable, "-m", "slimformer.searcher.cli", "finish", str(study), "--top", "2", "--steps", "40"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if "final model stored" in line:
                os.kill(proc.pid, signal.SIGKILL)  # while the second plan is being rebuilt or trained
                break
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    first = _trials(study, "study:final")
    assert len(first) == 1
    kept = first[0].user_attrs
    res = cli(*args[3:])
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"trial {kept['search_trial']}: its final model is stored already (kept)" in res.stderr
    finals = _trials(study, "study:final")
    assert len(finals) == 2
    again = next(t for t in finals if t.user_attrs["search_trial"] == kept["search_trial"]).user_attrs
    assert again == kept  # the stored one untouched; the interrupted one trained again from the start


def test_finish_refuses_bad_input_with_one_line(study, cli, expect_user_error):
    import yaml

    expect_user_error(cli("finish", study, "--top", "0"), "--top must be at least 1")
    storage = f"sqlite:///{study.parent / 'study.db'}"
    expect_user_error(cli("finish", study, "--storage", storage, "--study-name", "nope"), "no study named 'nope'")
    cfg = yaml.safe_load(study.read_text())
    for distill, message in (("data/missing.txt", "data.distill: file not found"),
                             ("data/sts-val-500.tsv", "shares 500 of its 500 rows with the validation split"),
                             ("data/sts-dev.tsv", "shares 1500 of its 1500 rows with the test split")):
        cfg["data"]["distill"] = distill
        study.write_text(yaml.safe_dump(cfg))
        expect_user_error(cli("finish", study), message)
    cfg["data"].pop("distill")
    study.write_text(yaml.safe_dump(cfg))
    # a study with no feasible trial
    src = optuna.load_study(study_name="study", storage=storage)
    bad = optuna.create_study(study_name="nofeasible", storage=storage, directions=["maximize", "minimize"])
    for key, value in src.user_attrs.items():
        bad.set_user_attr(key, value)
    t = src.get_trials(deepcopy=False)[0]
    bad.add_trial(optuna.trial.create_trial(values=t.values, params=t.params, distributions=t.distributions,
                                            user_attrs={**t.user_attrs, "constraints": {"speedup": 1.0}}))
    expect_user_error(cli("finish", study, "--storage", storage, "--study-name", "nofeasible"), "has no feasible trial")
    assert "nofeasible:final" not in [s.study_name for s in optuna.get_all_study_summaries(storage)]
    assert "study:final" not in [s.study_name for s in optuna.get_all_study_summaries(storage)]  # nothing written
