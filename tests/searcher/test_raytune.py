"""`search --backend ray`: a Ray-written study reads like a local one in `report`, and killing
the driver mid-study loses nothing on resume. Ray is in the test extra; one local Ray is started
per module (`ray_address`) and every search joins it with `--address`, as on a cluster."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import optuna
import pytest
import ray
from optuna.trial import TrialState


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory):
    """One local Ray (2 CPUs) for the module; its workers get an empty slimformer cache, as
    the tests' own processes do (they are started by Ray, not by the search)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLIMFORMER_CACHE", str(tmp_path_factory.mktemp("ray-cache")))
        mp.setenv("RAY_DEDUP_LOGS", "0")
        info = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield info.address_info["gcs_address"]
    finally:
        ray.shutdown()


def _study(folder):
    return optuna.load_study(study_name="study", storage=f"sqlite:///{folder / 'study.db'}")


def _shape(report: dict) -> dict:
    """The fields of a report, recursively (values differ between runs, fields must not)."""
    if isinstance(report, dict):
        return {k: _shape(v) for k, v in report.items()}
    if isinstance(report, list):
        return [_shape(report[0])] if report and isinstance(report[0], dict) else "list"
    return type(report).__name__ if report is not None else "None"


def test_ray_study_reports_like_a_local_one(tmp_path, make_study, cli, ray_address):
    # a budget every tiny plan holds (decided in few rounds): the rows to compare are feasible ones
    first = make_study(search={"trials": 3}, budget={"speedup": 0.5}, device={"max_rounds": 8})
    studies = {}
    for backend in ("local", "ray"):
        folder = tmp_path / backend
        shutil.copytree(first.parent / "data", folder / "data")
        path = shutil.copy(first, folder / "study.yaml")
        ray_args = ("--workers", 2, "--address", ray_address) if backend == "ray" else ()
        res = cli("search", path, "--backend", backend, *ray_args)
        assert res.returncode == 0, res.stderr[-3000:]
        rep = cli("report", path, "--json", "--all", "--no-rescore")
        assert rep.returncode == 0, rep.stderr[-2000:]
        studies[backend] = (json.loads(rep.stdout), _study(folder))
    (local, local_study), (ray, ray_study) = studies["local"], studies["ray"]
    # a feasible trial's row also carries its re-timing: compare like with like
    first_feasible = [next(t for t in rep["trials"] if t["feasible"]) for rep in (local, ray)]
    assert _shape(first_feasible[0]) == _shape(first_feasible[1])
    assert {k for t in local["trials"] for k in t} == {k for t in ray["trials"] for k in t}
    assert set(local) == set(ray) and ray["n_complete"] == 3
    assert ray["pareto"] and set(local["pareto"][0]) == set(ray["pareto"][0])
    local_t = local_study.get_trials(states=(TrialState.COMPLETE,))
    ray_t = ray_study.get_trials(states=(TrialState.COMPLETE,))
    assert {k for t in local_t for k in t.user_attrs} == {k for t in ray_t for k in t.user_attrs}
    assert all(t.user_attrs["latency_source"] == "measured" for t in ray_t)  # the attribute Ray once dropped
    assert all(set(t.constraints) == {"speedup"} for t in ray_t)  # passed through to Optuna
    assert [t.params for t in local_t][:1] == [t.params for t in ray_t][:1]  # the same seeded plan first
    assert list((tmp_path / "ray").glob("study-ray/run-*/t*"))  # short trial folders next to the study


def test_ray_driver_killed_then_resumed(tmp_path, make_study, cli, ray_address):
    # trial 1 hangs in its Ray worker (the fault table travels with the trainable), so the driver is
    # killed with trial 0 finished and trial 1 running, not racing a trial that may finish first
    path = make_study(search={"trials": 4})
    proc = subprocess.Popen([sys.executable, "-m", "slimformer.searcher.cli", "search", str(path), "--backend", "ray",
                             "--workers", "1", "--address", ray_address], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "SLIMFORMER_FAULT": "hang:1"})
    end, finished, running = time.time() + 400, {}, None
    while time.time() < end and running is None:
        time.sleep(0.5)
        try:
            trials = _study(path.parent).get_trials(deepcopy=False)
        except Exception:  # noqa: BLE001 - not created yet
            continue
        finished = {t.number: t.params for t in trials if t.state == TrialState.COMPLETE}
        now = [t for t in trials if t.state == TrialState.RUNNING and "plan" in t.user_attrs]  # sampled in full
        if finished and now:
            running = now[0]
    assert running is not None, "the Ray search never had a finished and a running trial"
    os.kill(proc.pid, signal.SIGKILL)  # Ray ends the dead driver's job (its trial workers) itself
    proc.wait()
    res = cli("search", path, "--backend", "ray", "--workers", "1", "--address", ray_address, timeout=500)
    assert res.returncode == 0, res.stderr[-3000:]
    trials = _study(path.parent).get_trials()
    for number, params in finished.items():
        assert trials[number].state == TrialState.COMPLETE and trials[number].params == params
    killed = trials[running.number]
    assert killed.state == TrialState.FAIL and "stale" in killed.user_attrs["fail_reason"]
    retry = [t for t in trials if t.user_attrs.get("retry_of") == running.number]
    assert retry and retry[0].params == running.params and retry[0].state == TrialState.COMPLETE
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4


def test_ray_times_at_the_study_threads_and_refuses_another_cpu(tmp_path, make_study, cli, ray_address):
    """Ray trials time at device.threads under the node's timing lock (their wait recorded); a node whose
    CPU is not the study's device is refused for timing: its trials fail with the reason, none enters
    the front."""
    path = make_study(search={"trials": 2}, device={"threads": 2}, budget={"speedup": 0.5})
    res = cli("search", path, "--backend", "ray", "--workers", 2, "--address", ray_address)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "every latency measurement at the study's 2 thread(s), one at a time per node" in res.stderr
    done = _study(path.parent).get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 2 and all(t.user_attrs["timing_threads"] == 2 for t in done)
    assert all(t.user_attrs["timing_wait_s"] >= 0 for t in done)
    study = optuna.load_study(study_name="study", storage=f"sqlite:///{path.parent / 'study.db'}")
    study.set_user_attr("device", {**study.user_attrs["device"], "cpu": "Another CPU 9000"})  # as if made elsewhere
    res = cli("search", path, "--backend", "ray", "--workers", 1, "--address", ray_address, "--trials", 3)
    assert res.returncode == 0, res.stderr[-3000:]
    trials = _study(path.parent).get_trials()
    refused = [t for t in trials[2:] if t.state == TrialState.FAIL]
    assert refused and all("refused for timing" in t.user_attrs["fail_reason"] and "Another CPU 9000" in
                           t.user_attrs["fail_reason"] for t in refused)
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2  # nothing timed on that node was kept
