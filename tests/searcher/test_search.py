"""Search end to end on a tiny model: study results, report, export; resume after a real
`kill -9` and after Ctrl-C; a changed space is refused."""

from __future__ import annotations

import json
import os
import re
import signal
import time

import optuna
from optuna.trial import TrialState


def _study(path):
    return optuna.load_study(study_name="study", storage=f"sqlite:///{path.parent / 'study.db'}")


def _wait_running_after(proc, path, n_complete, deadline=240):
    """Wait until the study has n_complete finished trials and one RUNNING whose plan is sampled
    (the `plan` attribute is written after the last parameter: a trial seen with only its first
    parameters is still sampling, and its retry would rightly hold more parameters)."""
    end = time.time() + deadline
    while time.time() < end:
        time.sleep(0.2)
        if proc.poll() is not None:
            raise AssertionError(f"the search exited ({proc.returncode}) early: {proc.stderr.read()[-3000:]}")
        if not (path.parent / "study.db").exists():
            continue
        try:
            trials = _study(path).get_trials(deepcopy=False)
        except Exception:  # noqa: BLE001 - the study may not exist yet
            continue
        done = sum(t.state == TrialState.COMPLETE for t in trials)
        running = [t for t in trials if t.state == TrialState.RUNNING and "plan" in t.user_attrs]
        if done >= n_complete and running:
            return {t.number: t.params for t in trials if t.state == TrialState.COMPLETE}, running[0]
    raise AssertionError("the search never reached the expected state")


def test_search_report_export(tmp_path, make_study, cli, expect_user_error):
    budget = 0.5  # met by every plan of the tiny space (the uncompressed one runs at 1x): export always runs
    path = make_study(budget={"speedup": budget})
    res = cli("search", path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "trials finished" in res.stdout
    study = _study(path)
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(complete) == 4
    assert complete[0].user_attrs["seeded"] == "edge"  # the budget's edge first (searcher/study/edge.py),
    uniform = [t for t in complete if t.user_attrs.get("seeded") is True]  # then the uniform plans,
    assert uniform and uniform[0].params["depth"] == 4  # the baseline plan the first of them
    for t in complete:
        assert {"quality", "latency_ms", "speedup", "size_mb", "plan", "constraints", "speedup_low", "speedup_high",
                "confidence", "rounds"} <= set(t.user_attrs)
        assert t.user_attrs["speedup_low"] <= t.user_attrs["speedup"] <= t.user_attrs["speedup_high"]
        assert t.constraints["speedup"] == budget - t.user_attrs["speedup_low"]  # holds at budget.confidence
    stored = study.user_attrs["retimed"]  # the search's final step re-timed the best feasible trials
    feasible = {t.number for t in complete if t.user_attrs["feasible"]}
    assert len(stored["candidates"]) == min(5, len(feasible)) and set(stored["candidates"]) <= feasible
    assert sorted(map(int, stored["trials"])) == sorted(stored["candidates"]) and stored["rounds"] == 60

    rep = cli("report", path, "--json", "--no-rescore")
    assert rep.returncode == 0, rep.stderr
    data = json.loads(rep.stdout)
    assert {"baseline", "pareto", "best", "cost_model"} <= set(data)
    for row in data["pareto"]:
        assert {"number", "quality", "latency_ms", "speedup", "size_mb", "feasible", "plan"} <= set(row)
        assert row["feasible"]
    full = cli("report", path, "--json")  # re-scored on the full split; reads the search's re-timing
    assert full.returncode == 0, full.stderr
    rescored = json.loads(full.stdout)
    assert rescored["retimed_current"] and "re-timing" not in full.stderr
    for row in rescored["pareto"] + rescored["retimed"]:
        assert row["quality_full"] is not None
    for row in rescored["retimed"]:
        assert row["retimed_low"] <= row["speedup_retimed"] <= row["retimed_high"]
        assert row["holds_retimed"] == (row["retimed_low"] >= budget)
    text = cli("report", path)
    for row in rescored["pareto"]:
        assert f"[{row['speedup_low']:.2f}, {row['speedup_high']:.2f}]" in text.stdout  # the interval is shown
    assert data["best"] is not None, data["pareto"]
    out = tmp_path / "best"
    exp = cli("export", path, "--best", "--out", out)
    assert exp.returncode == 0, exp.stderr
    number = int(re.search(r"exported trial (\d+) to", exp.stdout).group(1))
    assert study.trials[number].user_attrs["feasible"]
    ev = cli("evaluate", out, "--study", path, "--json")
    assert ev.returncode == 0, ev.stderr
    got = json.loads(ev.stdout)
    assert got["params"] == study.trials[number].user_attrs["params"]
    assert {"quality", "metric", "latency_ms", "baseline_latency_ms", "speedup", "params", "size_mb"} <= set(got)


def test_resume_after_kill_9(tmp_path, make_study, cli, expect_user_error, start):
    path = make_study(search={"trials": 5})
    proc = start(path, hang=2)
    finished, running = _wait_running_after(proc, path, 2)
    assert running.number == 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    res = cli("search", path)
    assert res.returncode == 0, res.stderr[-3000:]
    trials = _study(path).get_trials()
    for number, params in finished.items():  # nothing finished was lost
        assert trials[number].state == TrialState.COMPLETE and trials[number].params == params
    killed = trials[running.number]
    assert killed.state == TrialState.FAIL and "stale" in killed.user_attrs["fail_reason"]
    retry = [t for t in trials if t.user_attrs.get("retry_of") == running.number]
    assert retry and retry[0].params == running.params and retry[0].state == TrialState.COMPLETE
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 5


def test_ctrl_c_stops_cleanly_and_resumes(tmp_path, make_study, cli, expect_user_error, start):
    path = make_study(search={"trials": 4})
    proc = start(path, hang=1)
    _wait_running_after(proc, path, 1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "Traceback" not in err and f"Resume with the same command: slimformer search {path}" in err
    res = cli("search", path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sum(t.state == TrialState.COMPLETE for t in _study(path).get_trials()) == 4


def test_changed_space_is_refused(tmp_path, make_study, cli, expect_user_error):
    path = make_study(search={"trials": 1})
    assert cli("search", path).returncode == 0
    make_study(search={"trials": 2}, space={"heads": {"choices": [2, 4]}})
    before = len(_study(path).get_trials())
    expect_user_error(cli("search", path), "different search space")
    trials = _study(path).get_trials()
    assert len(trials) == before and sum(t.state == TrialState.COMPLETE for t in trials) == 1


def test_search_with_device_profile_records_predictions(tmp_path, make_study, cli, monkeypatch):
    """With a profile for this device, every trial stores its cost-model prediction (made
    before measuring) and the report scores the predictor against the measurements."""
    from slimformer.searcher.cost.profile import default_profile_path, profile_device, save_profile

    monkeypatch.setenv("SLIMFORMER_CACHE", str(tmp_path / "cache"))
    profile = profile_device(1, hidden_sizes=(64,), quick=True, tokens=(32,), head_dims=(16,), progress=False)
    save_profile(profile, default_profile_path(1, "eager"))
    path = make_study(search={"trials": 5}, budget={"speedup": 1.2})
    res = cli("search", path)
    assert res.returncode == 0, res.stderr[-3000:]
    trials = _study(path).get_trials()
    measured = [t for t in trials if t.state == TrialState.COMPLETE]
    assert measured and all(t.user_attrs["predicted_latency_ms"] > 0 for t in measured)
    for t in trials:
        if t.state == TrialState.PRUNED:  # skipped by the cost model: recorded with its reason
            assert "exceeds" in t.user_attrs["rejected"] and "quality" not in t.user_attrs
    rep = json.loads(cli("report", path, "--json", "--no-rescore").stdout)
    assert rep["cost_model"]["n"] == len(measured)
    assert rep["cost_model"]["mape"] is not None and rep["n_rejected"] == sum(
        t.state == TrialState.PRUNED for t in trials)
