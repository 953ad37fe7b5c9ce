"""slimformer leaves OpenMP's wait policy as the environment gives it (stock PyTorch is the baseline)
and records it in the device facts, so a timing says whether idle threads spun or slept."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = ("import os, slimformer.searcher, torch; from slimformer.searcher.devices.latency import device_facts; "
         "print(os.environ.get('OMP_WAIT_POLICY'), device_facts(1)['omp_wait_policy'])")


def _probe(**env) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    res = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env={**clean, **env},
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout.strip()


def test_stock_policy_is_left_alone():
    assert _probe() == "None None"


def test_the_users_policy_is_recorded():
    assert _probe(OMP_WAIT_POLICY="PASSIVE") == "PASSIVE PASSIVE"
