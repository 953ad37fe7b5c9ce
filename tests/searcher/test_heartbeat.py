"""Several machines on one PostgreSQL study: a trial whose machine crashed is found by Optuna's
heartbeat (a short SLIMFORMER_HEARTBEAT_INTERVAL here), failed and run again with its plan by
the next search on another machine. The crashed search runs as host `host-b` (its hostname
patched), so this host's own stale-process check cannot claim the trial: only the heartbeat can."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
from conftest import run_in_process
from optuna.trial import TrialState
from slimformer.searcher.study.storage import HEARTBEAT_GRACE_BEATS, open_storage

INTERVAL = 1  # seconds between heartbeats; stale after HEARTBEAT_GRACE_BEATS of them
OTHER_HOST = "import socket, sys; socket.gethostname = lambda: 'host-b'; from slimformer.searcher.cli import main; " \
             "sys.exit(main(sys.argv[1:]))"


def _trials(url, name):
    return optuna.load_study(study_name=name, storage=open_storage(url, read_only=True)).get_trials()


def test_heartbeat_finds_a_crashed_trial_on_another_host(make_study, postgres_url, monkeypatch):
    name = f"hb-{os.getpid()}"
    path = make_study(search={"trials": 3, "study_name": name, "seed_uniform": False, "sampler": "random"},
                      budget={"speedup": 0.5})
    monkeypatch.setenv("SLIMFORMER_HEARTBEAT_INTERVAL", str(INTERVAL))
    env = {**os.environ, "SLIMFORMER_FAULT": "hang:1"}  # host-b stops at trial 1, still beating
    proc = subprocess.Popen([sys.executable, "-c", OTHER_HOST, "search", str(path), "--storage", postgres_url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        end = time.time() + 240
        running = None
        while running is None and time.time() < end:
            time.sleep(0.3)
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            try:
                trials = _trials(postgres_url, name)
            except Exception:  # noqa: BLE001 - not created yet
                continue
            running = next((t for t in trials if t.number == 1 and t.state == TrialState.RUNNING
                            and "plan" in t.user_attrs), None)  # its plan fully drawn
        assert running is not None, "trial 1 never started on host-b"
        assert running.user_attrs["host"] == "host-b"
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # the machine crashes: no more heartbeats
        proc.communicate()
    time.sleep(HEARTBEAT_GRACE_BEATS * INTERVAL + 1)

    res = run_in_process("search", path, "--storage", postgres_url)
    assert res.returncode == 0, res.stderr[-3000:]
    trials = _trials(postgres_url, name)
    crashed = trials[1]
    assert crashed.state == TrialState.FAIL and "no heartbeat from host-b" in crashed.user_attrs["fail_reason"]
    assert "trial 1 was left running by a process that died on host-b (no heartbeat)" in res.stderr
    retries = [t for t in trials if t.user_attrs.get("retry_of") == 1]
    assert len(retries) == 1
    retry = retries[0]
    assert retry.state == TrialState.COMPLETE and retry.params == crashed.params == running.params
    assert retry.user_attrs["host"] != "host-b"  # run again here
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3  # the crashed trial does not count
