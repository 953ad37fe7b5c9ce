"""slimformer.searcher sets OMP_WAIT_POLICY=PASSIVE before torch loads (unless the user set it), so
PyTorch's idle OpenMP threads sleep as ONNX Runtime's do, and the device facts record the policy."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = ("import os, slimformer.searcher, torch; from slimformer.searcher.devices.latency import device_facts; "
         "print(os.environ['OMP_WAIT_POLICY'], device_facts(1)['omp_wait_policy'])")


def _probe(**env) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    res = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env={**clean, **env},
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout.strip()


def test_passive_by_default_and_recorded():
    assert _probe() == "PASSIVE PASSIVE"


def test_the_users_policy_wins():
    assert _probe(OMP_WAIT_POLICY="ACTIVE") == "ACTIVE ACTIVE"
