"""Search controller, CLI, tasks, latency protocol, cost model and reports.

Heavy modules load lazily so `slimformer --help` starts fast.

OpenMP's wait policy is left as the environment gives it: stock PyTorch is the baseline. Its spinning
idle threads are fastest on a quiet machine and slow PyTorch far more than the runtimes beside it when
other work shares the cores (benchmarks/results/wait_policy_results.md); the device facts record the policy.
"""

__all__ = ["load_study_config", "run_search", "report_study"]

_LAZY = {"load_study_config": "config", "run_search": "search", "report_study": "report.collect"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
