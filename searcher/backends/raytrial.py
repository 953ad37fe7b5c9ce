"""The Ray Tune trainable: one plan evaluated in a Ray worker process, reported as plain data.

This module imports nothing heavy at the top (Ray unpickles the trainable by importing it): torch,
the models and the Workbench load INSIDE the trial, holding the host's timing lock shared
(searcher/devices/timelock.py). A Ray worker that starts up, imports torch and loads the model
beside another trial's latency measurement takes a core from it, and stock PyTorch (the baseline)
loses far more from that than the runtimes it is compared with: the search's speedups came out
high (benchmarks/results/scale_out_quickstart_results.md: 31.9x in the search against 3.0x re-timed, while a
second actor was starting). Under the lock, the start-up waits for the measurement and the
measurement for the start-up.
"""

from __future__ import annotations

import json
import os

__all__ = ["evaluate_plan", "RESULT"]

RESULT = "slimformer_result"  # the Tune metric holding `trial.evaluate`'s result (JSON)
_BENCHES: dict = {}  # one Workbench per study config in each Ray worker process (kept across trials)


def evaluate_plan(config: dict, cfg=None, baseline=None, faults=None, device=None) -> None:
    """Evaluate one plan and report it to Tune. `faults` is the driver's SLIMFORMER_FAULT table (a
    cluster's workers do not share the driver's environment); `device` the study's stored device facts
    (a node with another CPU is refused for timing)."""
    from ..devices.timelock import lock_path, timing_lock

    lock = timing_lock(lock_path(cfg.path.parent if cfg.path else None))
    with lock.working():  # imports and loading are study work: never beside a measurement on this host
        from ray import tune
        from slimformer.methods import Plan

        from ..devices.latency import cpu_refusal
        from ..problem.workbench import Workbench
        from ..study.trial import evaluate
        from .faults import inject

        nan = float("nan")
        refusal = cpu_refusal(device)
        if refusal:  # before loading the model: this node does not time for this study
            tune.report({"error": f"{refusal} (Ray node {os.uname().nodename})", "quality": nan, "latency": nan,
                         "size": nan})
            return
        key = cfg.model_dump_json()
        if key not in _BENCHES:
            _BENCHES[key] = Workbench(cfg, log=lambda msg: None)
        try:
            inject((faults or {}).get(config["number"]))
            result = evaluate(_BENCHES[key], Plan.from_dict(config["plan"]), baseline)
        except Exception as exc:  # noqa: BLE001 - reported like a failed local trial
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            tune.report({"error": reason, "quality": nan, "latency": nan, "size": nan})
            return
    # Tune wants the objectives as metrics; `trial.evaluate`'s result travels whole, as one JSON string
    # (Tune flattens nested dicts and adds keys of its own), to the same `record` a local trial uses
    tune.report({RESULT: json.dumps(result), "quality": result["quality"], "latency": result["latency_ms"],
                 "size": result["size_mb"]})
