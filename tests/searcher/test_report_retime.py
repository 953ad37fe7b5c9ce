"""The report re-times the front: a best trial whose margin was measurement noise is flagged,
and the best trial that still holds the budget is named."""

from __future__ import annotations

from slimformer.searcher.report import holds_budget, render_text


def test_holds_budget_by_speedup_or_latency():
    assert holds_budget({"speedup": 1.5}, 15.0, 1.5) and not holds_budget({"speedup": 1.5}, 15.0, 1.46)
    assert holds_budget({"latency_ms": 10.0}, 15.0, 1.5) and not holds_budget({"latency_ms": 10.0}, 15.0, 1.4)
    assert holds_budget({"speedup": None, "latency_ms": None, "max_quality_drop": 1.0}, 15.0, 0.5)
    assert holds_budget(None, 15.0, 0.9)


def _row(number, quality, speedup, again, holds):
    return {"number": number, "quality": quality, "quality_full": quality - 1, "latency_ms": 15.0 / speedup,
            "speedup": speedup, "speedup_retimed": again, "holds_retimed": holds, "size_mb": 5.0,
            "simulated": False, "latency_source": "measured"}


def _report(front, best, alt):
    return {"study": "s", "storage": "sqlite:///s.db", "n_complete": 9, "n_failed": 0, "n_rejected": 0,
            "n_running": 0, "n_feasible": len(front), "budget": {"speedup": 1.5}, "device": None, "metric": "accuracy",
            "baseline": {"quality": 90.0, "latency_ms": 15.0, "size_mb": 16.0}, "pareto": front, "best": best,
            "best_retimed": alt, "cost_model": {"n": 0}}


def test_report_warns_when_the_best_trial_misses_the_budget_re_timed():
    edge, safe = _row(21, 89.0, 1.51, 1.46, False), _row(23, 88.5, 1.51, 1.64, True)
    text = render_text(_report([safe, edge], edge, safe))
    assert "1.46x" in text and "over budget when re-timed" in text
    assert "warning: re-timed at 1.46x" in text and "slimformer export --trial 23" in text
    quiet = render_text(_report([safe], safe, safe))
    assert "warning" not in quiet and "1.64x" in quiet
    none_hold = render_text(_report([edge], edge, None))
    assert "No front trial holds the budget when re-timed." in none_hold
