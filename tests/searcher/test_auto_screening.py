"""Cost-model screening under `device.runtime: auto` (searcher/cost/screen.py): with a profile for every
competing runtime a candidate is predicted in each and skipped only when even its fastest runtime is
clearly over the budget; each runtime's predictor is calibrated on that runtime's own measured latency;
with a runtime's profile missing nothing is screened and one line names the command that makes it."""

from __future__ import annotations

import copy

import optuna
import pytest
import transformers as T
from slimformer.methods import Plan

RUNTIMES = ("eager", "onnxruntime", "openvino")


@pytest.fixture(scope="module")
def eager_profile():
    from slimformer.searcher.cost.profile import profile_device

    return profile_device(1, hidden_sizes=(64,), quick=True, tokens=(32,), head_dims=(16,), progress=False)


def _scaled(profile: dict, runtime: str, factor: float) -> dict:
    """`profile` as if `runtime` ran every kernel and layer `factor` times as long (predictions scale by it)."""
    from slimformer.searcher.cost.profile import fingerprint

    out = copy.deepcopy(profile)
    out["fingerprint"] = fingerprint(1, runtime)

    def scale(table):
        return [scale(v) for v in table] if isinstance(table, list) else table * factor

    for dt in out["linear"].values():
        dt["ms"] = scale(dt["ms"])
    for dt in out["activation"].values():
        dt["ms"] = scale(dt["ms"])
    for by_dim in out["attention"].values():
        for table in by_dim.values():
            table["ms"] = scale(table["ms"])
    ov = out["overhead"]["bert"]
    ov["embed_ms"] = scale(ov["embed_ms"])
    for part in ("layer_ms", "attn_ms"):
        ov[part] = {dt: scale(v) for dt, v in ov[part].items()}
    return out


@pytest.fixture(scope="module")
def config(tiny_model_dir):
    return T.AutoConfig.from_pretrained(tiny_model_dir)


def _predictor(profiles: dict, config):
    from slimformer.searcher.cost.costfit import CalibratedPredictor
    from slimformer.searcher.cost.screen import StudyPredictor

    return StudyPredictor({rt: CalibratedPredictor(p, config, 32, 1) for rt, p in profiles.items()})


class _OnePlan:
    """A space that always samples `plan` (propose's only use of the space)."""

    def __init__(self, plan: Plan):
        self.plan = plan

    def sample(self, trial):
        return self.plan


def _propose(predictor, plan: Plan, baseline_ms: float, speedup: float):
    from slimformer.searcher.config import load_study_config
    from slimformer.searcher.study.trial import propose

    cfg = load_study_config(data={"budget": {"speedup": speedup}})
    trial = optuna.create_study().ask()
    propose(trial, cfg, _OnePlan(plan), {"latency_ms": baseline_ms}, predictor, may_reject=True)
    return trial


def test_a_plan_over_budget_in_every_runtime_is_skipped_one_fast_in_one_runtime_is_not(eager_profile, config):
    from slimformer.searcher.study.trial import Rejected

    full = Plan()
    slow_everywhere = _predictor({rt: _scaled(eager_profile, rt, 1.0) for rt in RUNTIMES}, config)
    baseline = slow_everywhere.predictors["eager"].predict(full)["latency_ms"]
    with pytest.raises(Rejected, match="in eager.*in onnxruntime.*in openvino.*exceeds"):
        _propose(slow_everywhere, full, baseline, speedup=2.0)  # predicted 1x everywhere, margin 25%

    fast_in_openvino = _predictor({"eager": _scaled(eager_profile, "eager", 1.0),
                                   "onnxruntime": _scaled(eager_profile, "onnxruntime", 1.0),
                                   "openvino": _scaled(eager_profile, "openvino", 0.2)}, config)
    trial = _propose(fast_in_openvino, full, baseline, speedup=2.0)  # not rejected: openvino may hold 2x
    by_runtime = trial.user_attrs["predicted_runtime_ms"]
    assert set(by_runtime) == set(RUNTIMES)
    assert trial.user_attrs["predicted_latency_ms"] == pytest.approx(by_runtime["openvino"])
    assert by_runtime["openvino"] == pytest.approx(0.2 * by_runtime["eager"], rel=1e-6)


def test_bits_16_is_predicted_only_in_the_runtime_that_runs_it(eager_profile, config):
    """ONNX Runtime refuses bfloat16: a bits-16 plan counts in eager alone, so a fast prediction there
    cannot save it."""
    from slimformer.searcher.study.trial import Rejected

    pred = _predictor({"eager": _scaled(eager_profile, "eager", 1.0),
                       "onnxruntime": _scaled(eager_profile, "onnxruntime", 0.01)}, config)
    bf16 = Plan(bits=16)
    assert set(pred.predict(bf16)["by_runtime"]) == {"eager"}
    baseline = pred.predictors["eager"].predict(Plan())["latency_ms"]
    with pytest.raises(Rejected, match="exceeds"):
        _propose(pred, bf16, baseline, speedup=20.0)


def test_a_format_no_profile_timed_is_measured_not_screened(eager_profile, config, monkeypatch):
    """A plan in a format the runtime's profile has no table for (here static int8: the eager grid has
    none) is never skipped on its prediction (which would be that of another format); the formats it
    has tables for (bf16, int8 weights) are screened."""
    from slimformer.searcher.devices import openvino

    monkeypatch.setattr(openvino, "capabilities", lambda: ("FP32", "BF16", "INT8"))
    pred = _predictor({"openvino": _scaled(eager_profile, "openvino", 1.0)}, config)
    baseline = pred.predictors["openvino"].predict(Plan())["latency_ms"]
    assert "int8_static" not in eager_profile["linear"]
    assert pred.rejection(Plan(bits=8, int8_scheme="static"), baseline / 50) is None
    assert pred.rejection(Plan(bits=16), baseline / 50)  # OpenVINO profiles bf16 where it runs it
    assert pred.rejection(Plan(bits=8), baseline / 50)  # int8 weights: profiled, so screened


def test_each_runtime_is_calibrated_on_its_own_measured_latency(eager_profile, config):
    """A trial under auto stores the counted runtime's latency and every runtime's first estimate
    (`runtime_speedups`); each runtime's predictor observes its own."""
    from slimformer.searcher.study.trial import runtime_latencies

    attrs = {"runtime": "openvino", "latency_ms": 4.0, "runtime_speedups": {"eager": 1.0, "onnxruntime": 2.0,
                                                                             "openvino": 4.5}}
    assert runtime_latencies(attrs, 20.0) == {"eager": 20.0, "onnxruntime": 10.0, "openvino": 4.0}
    pred = _predictor({rt: _scaled(eager_profile, rt, 1.0) for rt in RUNTIMES}, config)
    plans = [Plan(), Plan(layers=[0, 1]), Plan(ffn=128), Plan(heads=2), Plan(layers=[0]), Plan(bits=8)]
    for plan in plans:  # measured: eager as predicted, openvino 3x faster than predicted
        raw = pred.predictors["eager"].predict_raw(plan)["latency_ms"]
        pred.observe(plan, {"eager": raw, "openvino": raw / 3})
    assert {rt: p.n for rt, p in pred.predictors.items()} == {"eager": 6, "onnxruntime": 0, "openvino": 6}
    probe = Plan(layers=[0, 1, 2])
    raw = pred.predictors["eager"].predict_raw(probe)["latency_ms"]
    assert pred.predictors["eager"].predict(probe)["latency_ms"] == pytest.approx(raw, rel=0.05)
    assert pred.predictors["openvino"].predict(probe)["latency_ms"] == pytest.approx(raw / 3, rel=0.05)
    assert pred.predict(probe)["runtime"] == "openvino"
    errors = pred.errors()
    assert set(errors) == {"eager", "openvino"} and all(e["n"] == 6 for e in errors.values())


def test_a_recorded_trial_calibrates_every_runtime_it_was_timed_in(eager_profile, config):
    """`record` (what every backend calls) hands each runtime's measured latency to its own predictor;
    a runtime left out for the plan (here onnxruntime) observes nothing."""
    from slimformer.searcher.config import load_study_config
    from slimformer.searcher.study.trial import record

    pred = _predictor({rt: _scaled(eager_profile, rt, 1.0) for rt in RUNTIMES}, config)
    cfg = load_study_config(data={"budget": {"speedup": 2.0}})
    result = {"quality": 80.0, "latency_ms": 5.0, "speedup": 4.0, "size_mb": 1.0, "latency_source": "measured",
              "runtime": "openvino", "runtime_speedups": {"eager": 1.25, "openvino": 3.9}}
    record(optuna.create_study().ask(), cfg, {"quality": 81.0, "latency_ms": 20.0}, Plan(ffn=128), result, pred)
    assert {rt: p.n for rt, p in pred.predictors.items()} == {"eager": 1, "onnxruntime": 0, "openvino": 1}
    assert pred.predictors["eager"].targets() == [pytest.approx(16.0)]  # 20 ms / 1.25
    assert pred.predictors["openvino"].targets() == [5.0]  # the counted runtime: its refined latency


def test_with_a_runtime_profile_missing_nothing_is_screened_and_the_command_is_named(eager_profile, config):
    from slimformer.searcher.cost.profile import default_profile_path, save_profile
    from slimformer.searcher.cost.screen import StudyPredictor, study_predictor

    for rt in ("eager", "onnxruntime"):
        save_profile(_scaled(eager_profile, rt, 1.0), default_profile_path(1, rt))
    lines: list[str] = []
    assert study_predictor(RUNTIMES, 1, None, config, 32, 1, True, lines.append) is None
    assert len(lines) == 1 and "`slimformer profile --runtime openvino --threads 1`" in lines[0]
    assert "onnxruntime" not in lines[0] and "measured" in lines[0]

    save_profile(_scaled(eager_profile, "openvino", 1.0), default_profile_path(1, "openvino"))
    lines.clear()
    both = study_predictor(RUNTIMES, 1, None, config, 32, 1, True, lines.append)
    assert isinstance(both, StudyPredictor) and set(both.predictors) == set(RUNTIMES) and not lines
