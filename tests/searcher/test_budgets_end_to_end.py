"""budget.latency_ms, budget.max_quality_drop and budget.size_mb end to end, on one study drawn by
the `gp` sampler: every trial's stored constraints are its measured values minus the limits, it
is feasible exactly when all three hold, and only feasible trials reach the front and the best.
Nine trials: the seeded plans (the budget's edge, then the uniform plans), random start-up trials,
then GP's first proposal."""

from __future__ import annotations

import json

import optuna
import pytest
from conftest import run_in_process
from optuna.trial import TrialState

LATENCY_MS, MAX_DROP, SIZE_MB = 1000.0, 0.1, 8.0  # the tiny BERT is 8.3 MB: the uncompressed plan is too big
TRIALS = 9  # GPSampler's 8 start-up trials, then one it proposes


@pytest.fixture(scope="module")
def study(tmp_path_factory, study_writer):
    folder = tmp_path_factory.mktemp("budgets")
    path = study_writer(folder, budget={"latency_ms": LATENCY_MS, "max_quality_drop": MAX_DROP, "size_mb": SIZE_MB},
                        search={"sampler": "gp", "trials": TRIALS})
    res = run_in_process("search", path)
    assert res.returncode == 0, res.stderr[-3000:]
    study = optuna.load_study(study_name="study", storage=f"sqlite:///{folder / 'study.db'}")
    return path, study


def _uniform(s):
    """The first two uniform seeded plans (after the budget's edge, searcher/study/edge.py)."""
    return [t for t in s.trials if t.user_attrs.get("seeded") is True][:2]


def test_gp_sampler_proposes_after_its_start_up_trials(study):
    _, s = study
    trials = s.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * TRIALS
    proposed = [t.number for t in trials if "gp:relative_params:0" in t.system_attrs]  # GPSampler's own record
    assert proposed == [TRIALS - 1]


def test_each_budget_marks_the_right_trials_feasible(study):
    _, s = study
    base = s.user_attrs["baseline"]
    stored = s.user_attrs["budget"]
    assert (stored["latency_ms"], stored["max_quality_drop"], stored["size_mb"]) == (LATENCY_MS, MAX_DROP, SIZE_MB)
    for t in s.get_trials():
        a = t.user_attrs
        held = a.get("speedup_low") or a["speedup"]  # a latency budget holds at budget.confidence
        latency, drop, size = base["latency_ms"] / held, base["quality"] - a["quality"], a["size_mb"]
        want = {"latency_ms": latency - LATENCY_MS, "quality_drop": drop - MAX_DROP, "size_mb": size - SIZE_MB}
        assert a["constraints"] == pytest.approx(want)
        assert t.constraints == a["constraints"]  # what Optuna's sampler and front see
        assert a["feasible"] == (latency <= LATENCY_MS and drop <= MAX_DROP and size <= SIZE_MB)
    first, half = _uniform(s)  # the uniform seeded plans: uncompressed, then every layer at half width
    assert first.user_attrs["seeded"] and first.user_attrs["size_mb"] > SIZE_MB and not first.user_attrs["feasible"]
    assert first.user_attrs["constraints"]["quality_drop"] == pytest.approx(-MAX_DROP)  # it is the baseline
    assert half.user_attrs["size_mb"] <= SIZE_MB and half.user_attrs["feasible"]


def test_only_feasible_trials_reach_the_front_and_the_best(study):
    path, s = study
    rep = run_in_process("report", path, "--json", "--no-rescore")
    assert rep.returncode == 0, rep.stderr[-2000:]
    data = json.loads(rep.stdout)
    feasible = {t.number for t in s.get_trials() if t.user_attrs["feasible"]}
    assert data["n_feasible"] == len(feasible)
    first, half = _uniform(s)
    assert half.number in feasible and first.number not in feasible  # the half-width seed holds, the uncompressed plan is too big
    assert data["pareto"] and {r["number"] for r in data["pareto"]} <= feasible
    assert data["best"]["number"] in feasible
