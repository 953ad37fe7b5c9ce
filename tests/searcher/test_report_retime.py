"""The best is chosen on what repeats: the stored re-timing decides `export --best` and the
report's best; a trial that missed re-timing is never exported by --best; --trial N warns."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.distributions import FloatDistribution
from slimformer.methods import Plan
from slimformer.searcher.cli import main
from slimformer.searcher.report.collect import render_text
from slimformer.searcher.report.retime import RETIMED_ATTR, best_holding, is_current, miss_warning, retimed


def _row(number, quality, speedup, again, holds):
    return {"number": number, "quality": quality, "quality_full": quality - 1, "latency_ms": 15.0 / speedup,
            "speedup": speedup, "speedup_low": speedup - 0.02, "speedup_high": speedup + 0.02, "rounds": 30,
            "speedup_retimed": again, "retimed_low": again - 0.03, "retimed_high": again + 0.03,
            "holds_retimed": holds, "size_mb": 5.0, "simulated": False, "latency_source": "measured"}


def _report(front, timed, best, searched):
    return {"study": "s", "storage": "sqlite:///s.db", "n_complete": 9, "n_failed": 0, "n_rejected": 0,
            "n_running": 0, "n_feasible": len(front), "budget": {"speedup": 1.5, "confidence": 0.9}, "device": None,
            "metric": "accuracy", "baseline": {"quality": 90.0, "latency_ms": 15.0, "size_mb": 16.0},
            "pareto": front, "retimed": timed, "retimed_current": True,
            "retiming": {"rounds": 60, "target": 1.5}, "best": best, "best_search": searched, "cost_model": {"n": 0}}


def test_report_shows_intervals_and_the_best_that_holds_re_timed():
    edge, safe = _row(21, 89.0, 1.51, 1.46, False), _row(23, 88.5, 1.6, 1.64, True)
    text = render_text(_report([safe, edge], [edge, safe], safe, edge))
    assert "[1.49, 1.53]" in text and "[1.43, 1.49]" in text  # search and re-timed intervals
    assert "over budget when re-timed" in text and "lower bound >= 1.50x" in text
    assert "best under the budget: trial 23" in text and "1.64x re-timed" in text
    assert "the best search trial 21" in text and "misses the budget" in text
    none_hold = render_text(_report([edge], [edge], None, edge))
    assert "none holds the budget when re-timed" in none_hold and "slimformer export --trial 21" in none_hold


def _plan(heads, ffn):
    return Plan(heads=heads, ffn=ffn).to_dict()


@pytest.fixture
def retimed_study(make_study):
    """A stored study on the tiny model: trial 0 is the best in the search (1.07x, low 1.06x) but
    missed the re-timing (1.03x); trial 1 holds re-timed; trial 2 is over budget in the search."""
    path = make_study(budget={"speedup": 1.05})
    study = optuna.create_study(study_name="study", storage=f"sqlite:///{path.parent / 'study.db'}",
                                directions=["maximize", "minimize"])
    study.set_user_attr("baseline", {"quality": 50.0, "latency_ms": 10.0, "metric": "spearman", "size_mb": 1.0})
    study.set_user_attr("budget", {"speedup": 1.05, "confidence": 0.9})
    study.set_user_attr("metric", "spearman")
    rows = [(0, 40.0, 1.07, 1.06, _plan(2, 128)), (1, 39.0, 1.2, 1.15, _plan(2, 64)),
            (2, 45.0, 1.04, 1.0, _plan(4, 256))]
    for number, quality, speedup, low, plan in rows:
        cons = {"speedup": 1.05 - low}
        study.add_trial(optuna.trial.create_trial(
            values=[quality, 10.0 / speedup], params={"x": float(number)},
            distributions={"x": FloatDistribution(0, 9)},
            user_attrs={"plan": plan, "quality": quality, "speedup": speedup, "speedup_low": low,
                        "speedup_high": speedup + 0.01, "latency_ms": 10.0 / speedup, "size_mb": 1.0,
                        "params": 1, "simulated": False, "constraints": cons, "feasible": cons["speedup"] <= 0},
            system_attrs={"constraints": [cons["speedup"]]}))
    trial = {"speedup": 1.03, "low": 1.01, "high": 1.05, "confidence": 0.9, "rounds": 60}
    study.set_user_attr(RETIMED_ATTR, {"candidates": [0, 1], "rounds": 60, "confidence": 0.9, "target": 1.05,
                                       "baseline_ms": 10.0,
                                       "trials": {"0": {**trial, "holds": False},
                                                  "1": {**trial, "speedup": 1.18, "low": 1.12, "high": 1.22,
                                                        "holds": True}}})
    return path, study


def test_export_best_never_exports_a_trial_that_missed_re_timing(retimed_study, tmp_path, capsys):
    path, study = retimed_study
    assert is_current(study) and retimed(study)[1].holds and not retimed(study)[0].holds
    assert best_holding(study).number == 1
    out = tmp_path / "best"
    assert main(["export", str(path), "--best", "--out", str(out)]) == 0
    meta = json.loads(next(p for p in out.iterdir() if p.name.endswith(".json") and "metrics" in p.read_text())
                      .read_text())
    assert meta["metrics"]["trial"] == 1 and meta["metrics"]["retimed"]["holds"] is True
    assert "exported trial 1" in capsys.readouterr().out


def test_export_best_with_none_holding_exits_2_naming_trial_n(retimed_study, tmp_path, capsys):
    path, study = retimed_study
    rec = study.user_attrs[RETIMED_ATTR]
    rec["trials"]["1"]["holds"] = False
    study.set_user_attr(RETIMED_ATTR, rec)
    out = tmp_path / "none"
    assert main(["export", str(path), "--best", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "no trial holds the budget when re-timed" in err[-1] and "--trial 0" in err[-1]
    assert not out.exists()


def test_export_trial_n_exports_a_miss_with_a_warning(retimed_study, tmp_path, capsys):
    path, study = retimed_study
    assert "lower bound 1.01x < 1.05x" in miss_warning(study, study.trials[0])
    assert "misses the budget in the search" in miss_warning(study, study.trials[2])
    assert miss_warning(study, study.trials[1]) is None
    assert main(["export", str(path), "--trial", "0", "--out", str(tmp_path / "t0")]) == 0
    assert "warning: trial 0 misses the budget when re-timed" in capsys.readouterr().err


def test_export_best_re_times_when_trials_finished_since(retimed_study, tmp_path, capsys):
    """A stored re-timing that no longer covers the best feasible trials is measured again (and stored)."""
    path, study = retimed_study
    rec = study.user_attrs[RETIMED_ATTR]
    study.set_user_attr(RETIMED_ATTR, {**rec, "candidates": [1], "trials": {"1": rec["trials"]["1"]}})
    assert not is_current(study)
    main(["export", str(path), "--best", "--out", str(tmp_path / "again")])
    assert "re-timing the 2 best feasible trial(s)" in capsys.readouterr().err
    fresh = optuna.load_study(study_name="study", storage=f"sqlite:///{path.parent / 'study.db'}")
    assert is_current(fresh) and set(retimed(fresh)) == {0, 1}


def test_report_reads_the_stored_re_timing_and_scores_a_whole_split_once(retimed_study, make_study):
    """The report's best follows the stored re-timing; with no validation_size the search split
    is the whole file, so the front is not rebuilt to score it again."""
    from slimformer.searcher.config import load_study_config
    from slimformer.searcher.report.collect import report_study

    path, _ = retimed_study
    make_study(budget={"speedup": 1.05}, data={"validation_size": None})
    lines = []
    rep = report_study(load_study_config(path), log=lines.append)
    assert not lines  # nothing measured: the re-timing is current and the split was scored in full
    assert rep["best"]["number"] == 1 and rep["best_search"]["number"] == 0
    assert [r["number"] for r in rep["retimed"]] == [0, 1] and rep["retimed"][0]["holds_retimed"] is False
    assert all(r["quality_full"] == r["quality"] for r in rep["pareto"] + rep["retimed"])
    text = render_text(rep)
    assert "best under the budget: trial 1" in text and "[1.01, 1.05]" in text
