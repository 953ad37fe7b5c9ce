"""Search controller, CLI, tasks, latency protocol, cost model and reports.

Heavy modules load lazily so `slimformer --help` starts fast.

Importing this package sets OMP_WAIT_POLICY=PASSIVE unless the environment already sets it: PyTorch's
OpenMP threads then sleep instead of spinning between parallel regions, as ONNX Runtime's do
(searcher/devices/onnxruntime.py turns spinning off). libgomp reads it once, when torch loads, so it
applies to the CLI, its workers and any process that imports slimformer.searcher before torch.
Spinning threads steal the cores of everything timed beside them: with other work on a 2-core machine
PyTorch float32 ran more than 10x slower spinning than sleeping (benchmarks/wait_policy_results.md).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = ["load_study_config", "run_search", "report_study"]

_LAZY = {"load_study_config": "config", "run_search": "search", "report_study": "report.collect"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
