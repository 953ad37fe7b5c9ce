"""Feasibility first (searcher/study/edge.py): at the start of a study a few plans along the size axis
are timed, a budget the smallest plan clearly misses is refused before anything is written, and the
budget's edge is queued first, so every sampler gets a feasible trial early whenever the space holds one.

The timing here is a fake whose speedup is a known function of plan size: a model "runs" in time
proportional to its encoder parameters plus a fixed part, with 3% multiplicative noise per call,
so the edge each budget should find is computed from the plans alone."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import optuna
import pytest
from conftest import run_in_process
from optuna.trial import TrialState

FIXED = 20_000  # the part of the fake time that no pruning removes (in encoder parameters)
SPACE = {"heads": {"choices": [1, 2, 3, 4]}, "ffn": {"choices": [32, 64, 96, 128, 160, 192, 224, 256]},
         "depth": {"min": 1}}


def _cost(model) -> float:
    """The fake time of one call, ms: encoder parameters plus FIXED, over 10,000."""
    return (sum(p.numel() for n, p in model.named_parameters() if "encoder.layer" in n) + FIXED) / 1e4


class FakeRunner:
    def __init__(self, model):
        self.cost = _cost(model)

    def __call__(self):
        return None


@pytest.fixture
def fake_timing(monkeypatch):
    """Every latency measurement of the Workbench (start-up, baseline, trials, re-timing) is the fake."""
    from slimformer.searcher.devices.latency import LatencyResult
    from slimformer.searcher.problem import workbench

    rng = np.random.default_rng(0)

    def measure(runners, baseline=None, rounds=30, **_):
        samples = {name: list(fn.cost * np.exp(rng.normal(0, 0.03, rounds))) for name, fn in runners.items()}
        out = {name: LatencyResult(float(np.median(xs)), float(np.quantile(xs, 0.1)), float(np.quantile(xs, 0.9)),
                                   0.0, xs) for name, xs in samples.items()}
        if baseline is not None:
            for res in out.values():
                res.speedup = float(np.median([b / c for b, c in zip(samples[baseline], res.samples_ms)]))
        return out

    monkeypatch.setattr(workbench, "measure_latency", measure)
    monkeypatch.setattr(workbench.Workbench, "runner", lambda self, model, runtime=None: FakeRunner(model))
    monkeypatch.setattr(workbench.Workbench, "baseline_runner", property(lambda self: FakeRunner(self.model)))


@pytest.fixture(scope="module")
def axis(tiny_model_dir):
    """The size axis of SPACE on the tiny BERT: each step's params and its true (noise-free) speedup."""
    from slimformer.methods import Plan, apply_plan, get_adapter
    from slimformer.searcher.problem.models import load_model
    from slimformer.searcher.study.edge import axis_params
    from slimformer.spaces import Space

    model = load_model(str(tiny_model_dir), "AutoModel")
    space = Space.from_dict(SPACE, get_adapter(model).shape())
    params = axis_params(space)
    base = _cost(model)
    cheap = {"importance": "magnitude", "recovery": "none", "distill": {"steps": 0}}
    speedups = [base / _cost(apply_plan(model, Plan.from_dict({**space.plan_from_params(p).to_dict(), **cheap}),
                                        None, structure_only=True)) for p in params]
    return params, speedups


def _study(path):
    return optuna.load_study(study_name="study", storage=f"sqlite:///{path.parent / 'study.db'}")


def _search(make_study, budget, sampler="random", trials=6):
    path = make_study(budget={"speedup": budget}, space=SPACE, device={"runtime": "eager", "rounds": 20},
                      search={"sampler": sampler, "trials": trials, "seed": 0})
    return path, run_in_process("search", path)


def test_the_axis_runs_from_the_smallest_plan_to_the_largest_widths(axis):
    from slimformer.searcher.study.edge import MAX_MEASURED, measured_steps

    params, speedups = axis
    assert len(params) == 8  # ffn has the most choices: 8 steps
    assert params[0]["depth"] == 1 and params[0]["heads_L0"] == 1 and params[0]["ffn_L0"] == 32
    assert params[-1]["depth"] == 4 and params[-1]["heads_L3"] == 4 and params[-1]["ffn_L3"] == 256
    assert speedups == sorted(speedups, reverse=True) and speedups[0] > 5 and speedups[-1] == pytest.approx(1)
    assert measured_steps(8) == [0, 2, 5, 7] and len(measured_steps(8)) == MAX_MEASURED
    assert measured_steps(1) == [0] and measured_steps(3) == [0, 1, 2]


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "gp"])
def test_each_sampler_gets_the_edge_first(sampler, axis, make_study, fake_timing):
    params, speedups = axis
    budget = round((speedups[2] + speedups[5]) / 2, 2)  # measured steps 0 and 2 hold it, 5 and 7 do not
    path, res = _search(make_study, budget, sampler)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "budget edge: step 2 of 7" in res.stdout + res.stderr
    trials = _study(path).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    first = trials[0]
    assert first.user_attrs["seeded"] == "edge" and first.params == params[2]  # the edge, before anything else
    assert first.user_attrs["feasible"]
    logged = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("trial   0:")]
    assert len(logged) == 1 and logged[0].endswith("feasible seeded: edge (0 s)")  # the trial log says so
    assert trials[1].user_attrs["seeded"] == "edge" and trials[1].params in (params[1], params[3])  # its neighbour
    # then the uniform plans the axis does not rule out: not the uncompressed one (no cheaper than step 7,
    # which clearly misses this budget), which the log says
    seeded = [t for t in trials if t.user_attrs.get("seeded") is True]
    assert seeded
    assert not any(t.params.get("depth") == 4 and t.params.get("ffn_L0") == 256 and t.params.get("heads_L0") == 4
                   for t in trials)
    assert "not seeded: a uniform plan (4 layers, heads 4, FFN 256, bits 32) no cheaper than axis step" in res.stdout + res.stderr
    assert sum(t.user_attrs.get("seeded") == "edge" for t in trials) == 2  # queued once each, run once each


def test_a_budget_just_inside_reach_is_not_refused(axis, make_study, fake_timing):
    _, speedups = axis
    path, res = _search(make_study, round(speedups[0] * 0.97, 2), trials=2)
    assert res.returncode == 0, res.stderr[-3000:]
    first = _study(path).get_trials()[0]
    assert first.user_attrs["seeded"] == "edge" and first.params["depth"] == 1 and first.user_attrs["feasible"]


def test_a_budget_within_the_noise_is_not_refused(axis, make_study, fake_timing):
    """2% over the smallest plan's true speedup: inside the measured spread, so the search tries it."""
    _, speedups = axis
    path, res = _search(make_study, round(speedups[0] * 1.02, 2), trials=1)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "within the measured noise" in res.stdout + res.stderr
    assert _study(path).get_trials()[0].params["depth"] == 1


def test_a_budget_out_of_reach_is_refused_before_anything_is_written(axis, make_study, fake_timing, tmp_path):
    _, speedups = axis
    t0 = time.monotonic()
    path, res = _search(make_study, round(speedups[0] * 1.3, 2))
    assert res.returncode == 2, res.stderr[-3000:]
    line = res.stderr.strip().splitlines()[-1]
    assert "out of reach: the smallest plan in the space runs only" in line and "in the measured spread" in line
    assert "Traceback" not in res.stderr
    assert not list(tmp_path.glob("*.db")) and not (path.parent / "study.db").exists()  # nothing written
    assert time.monotonic() - t0 < 60


def test_finish_names_the_closest_trials(axis, make_study, fake_timing, cli, expect_user_error):
    """No feasible trial: finish names the trials nearest the budget and the budget each would hold."""
    _, speedups = axis
    budget = round(speedups[0] * 0.97, 2)
    path, res = _search(make_study, budget, trials=3)
    assert res.returncode == 0, res.stderr[-3000:]
    src = _study(path)
    bad = optuna.create_study(study_name="missed", storage=f"sqlite:///{path.parent / 'study.db'}",
                              directions=src.directions)
    for key, value in src.user_attrs.items():
        bad.set_user_attr(key, value)
    for t, miss in zip(src.get_trials(), (0.3, 0.1, 2.0)):  # each trial's result made to miss by `miss`
        bad.add_trial(optuna.trial.create_trial(values=t.values, params=t.params, distributions=t.distributions,
                                                user_attrs={**t.user_attrs, "constraints": {"speedup": miss}}))
    res = cli("finish", path, "--storage", f"sqlite:///{path.parent / 'study.db'}", "--study-name", "missed")
    expect_user_error(res, "has no feasible trial yet", f"budget speedup {budget}",
                      f"closest: #1 would hold speedup {budget - 0.1:.2f}; #0 would hold speedup {budget - 0.3:.2f}; "
                      f"#2 would hold speedup {budget - 2.0:.2f}")


def test_queued_edge_plans_survive_kill_9_and_resume(make_study, cli, start):
    """A real search (real timing on the tiny model) killed while the edge plan runs: on resume the
    edge plan runs again in its place and its neighbour runs once; nothing is counted twice."""
    from test_search import _wait_running_after

    path = make_study(budget={"speedup": 1.05}, space=SPACE, device={"runtime": "eager", "rounds": 10},
                      search={"sampler": "tpe", "trials": 4, "seed": 0})
    proc = start(path, hang=0)
    _, running = _wait_running_after(proc, path, 0)
    assert running.number == 0 and running.user_attrs["seeded"] == "edge"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    queued = [t for t in _study(path).get_trials() if t.state == TrialState.WAITING]
    assert queued and queued[0].user_attrs["seeded"] in ("edge", True)  # still queued in the storage
    res = cli("search", path)
    assert res.returncode == 0, res.stderr[-3000:]
    trials = _study(path).get_trials()
    assert trials[0].state == TrialState.FAIL and "stale" in trials[0].user_attrs["fail_reason"]
    retry = [t for t in trials if t.user_attrs.get("retry_of") == 0]
    assert len(retry) == 1 and retry[0].params == running.params and retry[0].user_attrs["seeded"] == "edge"
    assert retry[0].state == TrialState.COMPLETE
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 4
    params = [tuple(sorted(t.params.items())) for t in done if t.user_attrs.get("seeded")]
    assert len(params) == len(set(params))  # no queued plan ran twice


def test_uniform_seeds_no_cheaper_than_a_missing_step_are_dropped(axis, make_study):
    from slimformer.methods import get_adapter
    from slimformer.searcher.config import load_study_config
    from slimformer.searcher.problem.models import load_model
    from slimformer.searcher.study.edge import AxisPoint, Edge
    from slimformer.spaces import Space

    params, _ = axis
    cfg = load_study_config(make_study(space=SPACE, budget={"speedup": 3.0}))
    space = Space.from_dict(SPACE, get_adapter(load_model(str(cfg.model.name), "AutoModel")).shape())
    misses = AxisPoint(5, params[5], speedup=2.0, low=1.9, high=2.2, baseline_ms=10.0)  # clearly under 3x
    holds = AxisPoint(2, params[2], speedup=3.5, low=3.3, high=3.8, baseline_ms=10.0)
    uniform = space.uniform_plans()
    said = []
    kept = Edge([], [holds, misses]).worth_trying(cfg, space, uniform + [params[4], params[6]], said.append)
    assert uniform[0] not in kept and params[6] not in kept  # the uncompressed plan; a wider step than 5
    assert params[4] in kept  # narrower than step 5: it may hold
    assert len(said) == len(uniform) + 2 - len(kept) and all("no cheaper than axis step 5" in m for m in said)
    near = AxisPoint(5, params[5], speedup=2.9, low=2.8, high=3.1, baseline_ms=10.0)  # within its spread: kept
    assert Edge([], [near]).worth_trying(cfg, space, uniform, said.append) == uniform


def test_the_axis_runs_in_the_fastest_int8_scheme(make_study, fake_timing, monkeypatch):
    """With static and dynamic int8 in the space, step 0 is timed in both; the faster one (here: static,
    made twice as fast by the fake) is the axis's scheme, and the queued edge plans carry it."""
    from slimformer.methods import plan_of
    from slimformer.searcher.problem import workbench

    class SchemeRunner(FakeRunner):
        def __init__(self, model):
            super().__init__(model)
            if plan_of(model) is not None and plan_of(model).int8_scheme == "static":
                self.cost /= 2

    monkeypatch.setattr(workbench.Workbench, "runner", lambda self, model, runtime=None: SchemeRunner(model))
    space = {**SPACE, "bits": [8], "int8_scheme": ["dynamic", "static"]}
    path = make_study(space=space, budget={"speedup": 2.0}, device={"runtime": "onnxruntime", "threads": 1,
                                                                    "batch_size": 1, "seq_len": 16},
                      search={"trials": 1, "sampler": "tpe", "seed": 0})
    from slimformer.searcher.config import load_study_config
    from slimformer.searcher.search import run_search

    said = []
    run_search(load_study_config(path), log=said.append, progress=False)
    text = "\n".join(said)
    assert "int8 static)" in text.split("size axis")[1].splitlines()[0]
    first = _study(path).get_trials()[0]
    assert first.user_attrs["seeded"] == "edge" and first.params["int8_scheme"] == "static"
