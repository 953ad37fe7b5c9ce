"""Adaptive timing with a fake timer: a candidate far from the budget stops after its first
estimate, one near the edge gets more rounds until its interval clears the budget or the cap,
and the interval is what decides feasibility."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from slimformer.searcher.config import load_study_config
from slimformer.searcher.devices.adaptive import adaptive_speedup, speedup_interval
from slimformer.searcher.study.budget import Budget
from slimformer.searcher.study.trial import record, time_candidate


class FakeTimer:
    """Stands in for the interleaved rounds: per-round baseline times around 20 ms, the candidate
    `speedup` times faster with multiplicative noise (seeded); counts the rounds asked for."""

    def __init__(self, speedup: float, noise: float, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.speedup, self.noise, self.calls = speedup, noise, []

    def __call__(self, n: int):
        self.calls.append(n)
        base = 20.0 * (1 + 0.2 * self.rng.random(n))  # load drifts: hits both alike
        ratio = self.speedup * np.exp(self.noise * self.rng.standard_normal(n))
        return list(base), list(base / ratio)


def test_far_from_the_edge_stops_after_the_first_estimate():
    fast = FakeTimer(3.0, 0.03)
    est = adaptive_speedup(fast, target=2.0, first=20, step=10, cap=60)
    assert (est.verdict, est.rounds, fast.calls) == ("holds", 20, [20])
    assert est.low >= 2.0 and est.low <= est.speedup <= est.high
    slow = FakeTimer(1.3, 0.03)
    est = adaptive_speedup(slow, target=2.0, first=20, step=10, cap=60)
    assert (est.verdict, est.rounds, slow.calls) == ("misses", 20, [20])
    assert est.high < 2.0


def test_near_the_edge_gets_more_rounds_until_the_interval_clears():
    timer = FakeTimer(2.04, 0.05, seed=9)
    first = speedup_interval([b / c for b, c in zip(*FakeTimer(2.04, 0.05, seed=9)(20))], 0.9)
    assert first[0] < 2.0 <= first[1]  # the first estimate straddles the budget
    est = adaptive_speedup(timer, target=2.0, first=20, step=10, cap=60)
    assert timer.calls[0] == 20 and all(n == 10 for n in timer.calls[1:]) and len(timer.calls) > 1
    assert est.rounds == sum(timer.calls) <= 60
    assert est.verdict == "holds" and est.low >= 2.0


def test_the_cap_is_respected_and_an_undecided_candidate_does_not_hold():
    timer = FakeTimer(2.0, 0.05, seed=1)  # exactly at the budget: never clears it
    est = adaptive_speedup(timer, target=2.0, first=20, step=15, cap=60)
    assert est.verdict == "undecided" and est.rounds == 60 and timer.calls == [20, 15, 15, 10]
    assert est.low < 2.0 <= est.high


def test_no_latency_budget_times_the_first_estimate_only():
    timer = FakeTimer(2.0, 0.05)
    est = adaptive_speedup(timer, target=None, first=12, cap=60)
    assert est.verdict == "no latency budget" and timer.calls == [12]


def test_interval_is_seeded_and_widens_with_confidence():
    ratios = list(2.0 * np.exp(0.05 * np.random.default_rng(0).standard_normal(30)))
    assert speedup_interval(ratios, 0.9) == speedup_interval(ratios, 0.9)
    lo90, hi90 = speedup_interval(ratios, 0.9)
    lo99, hi99 = speedup_interval(ratios, 0.99)
    assert lo99 < lo90 <= float(np.median(ratios)) <= hi90 < hi99
    with pytest.raises(ValueError):
        speedup_interval([], 0.9)


def test_speedup_target_from_a_speedup_or_a_latency_budget():
    assert Budget.from_stored({"speedup": 1.5}).target(30.0) == 1.5
    assert Budget.from_stored({"latency_ms": 10.0}).target(30.0) == 3.0
    assert Budget.from_stored({"size_mb": 5.0}).target(30.0) is None


class FakeBench:
    """A Workbench's timing surface over fake runtimes: runtime name -> its true speedup; each runner
    is the runtime's name, and each interleaved call times the baseline and every runner given."""

    def __init__(self, cfg, speedups: dict[str, float], noise: float = 0.05):
        self.cfg, self.runtimes = cfg, tuple(speedups)
        self.speedups, self.noise, self.rng = speedups, noise, np.random.default_rng(0)
        self.calls: list[tuple[tuple[str, ...], int]] = []  # (runners timed, rounds)

    def runner(self, model, runtime):
        return runtime

    def paired_runners(self, runners: dict):
        def more(n: int):
            self.calls.append((tuple(runners.values()), n))
            base = 20.0 * (1 + 0.2 * self.rng.random(n))
            out = {"baseline": list(base)}
            for name, rt in runners.items():
                out[name] = list(base / (self.speedups[rt] * np.exp(self.noise * self.rng.standard_normal(n))))
            return out

        return more


def test_time_candidate_uses_the_study_rounds_and_cap():
    cfg = load_study_config(data={"device": {"rounds": 6, "max_rounds": 14}, "budget": {"speedup": 2.0}})
    bench = FakeBench(cfg, {"eager": 2.0})
    est = time_candidate(bench, object(), {"latency_ms": 20.0})
    assert [n for _, n in bench.calls] == [6, 5, 3] and est.rounds == 14 and est.confidence == 0.9
    assert est.runtime == "eager" and est.runtime_speedups is None


def test_auto_times_every_runtime_first_then_only_the_fastest():
    cfg = load_study_config(data={"device": {"rounds": 6, "max_rounds": 30}, "budget": {"speedup": 1.9}})
    bench = FakeBench(cfg, {"eager": 1.5, "onnxruntime": 2.0, "openvino": 1.2}, noise=0.1)  # near the edge
    est = time_candidate(bench, object(), {"latency_ms": 20.0})
    assert bench.calls[0] == (("eager", "onnxruntime", "openvino"), 6)  # one interleaved first estimate
    assert all(runners == ("onnxruntime",) for runners, _ in bench.calls[1:]) and len(bench.calls) > 1
    assert est.runtime == "onnxruntime" and set(est.runtime_speedups) == {"eager", "onnxruntime", "openvino"}
    assert est.runtime_speedups["openvino"] < est.runtime_speedups["eager"] < est.runtime_speedups["onnxruntime"]
    assert est.rounds == sum(n for _, n in bench.calls)  # the first rounds count for the chosen runtime


def test_auto_leaves_out_a_runtime_that_cannot_run_the_plan():
    cfg = load_study_config(data={"device": {"rounds": 6}, "budget": {"speedup": 1.2}})
    bench = FakeBench(cfg, {"eager": 1.6, "onnxruntime": 3.0})
    est = time_candidate(bench, object(), {"latency_ms": 20.0}, runtimes=("eager",))  # e.g. bf16 layers
    assert est.runtime == "eager" and all(runners == ("eager",) for runners, _ in bench.calls)


def _result(speedup, low, high):
    return {"quality": 80.0, "latency_ms": 20.0 / speedup, "speedup": speedup, "speedup_low": low,
            "speedup_high": high, "confidence": 0.9, "rounds": 40, "timing_verdict": "undecided", "size_mb": 5.0}


def test_the_interval_is_stored_and_decides_feasibility():
    cfg = load_study_config(data={"budget": {"speedup": 2.0}})
    study = optuna.create_study(directions=["maximize", "minimize"])
    baseline = {"quality": 85.0, "latency_ms": 20.0}
    edge = study.ask()
    record(edge, cfg, baseline, None, _result(2.03, 1.98, 2.08))  # median meets the budget, the bound does not
    assert edge.user_attrs["speedup_low"] == 1.98 and edge.user_attrs["rounds"] == 40
    assert edge.user_attrs["feasible"] is False and edge.user_attrs["constraints"]["speedup"] == pytest.approx(0.02)
    safe = study.ask()
    record(safe, cfg, baseline, None, _result(2.10, 2.02, 2.16))
    assert safe.user_attrs["feasible"] is True
    lat = load_study_config(data={"budget": {"latency_ms": 10.0}})
    t = study.ask()
    record(t, lat, baseline, None, _result(2.03, 1.98, 2.08))  # 20 ms / 1.98 = 10.1 ms > 10 ms
    assert t.user_attrs["constraints"]["latency_ms"] == pytest.approx(20.0 / 1.98 - 10.0)
