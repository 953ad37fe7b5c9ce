"""Graceful stop: a stop request waits for storage writes, abandons a running candidate; a
second one exits at once and leaves a storage that the next run resumes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import optuna
import pytest
from optuna.trial import TrialState
from slimformer.searcher.backends.signals import StopGuard, stop_guard


def _in_own_process(body: str) -> subprocess.CompletedProcess:
    """Run `body` (with stop_guard, os, signal, time imported) in a process of its own: a signal a test
    sends itself must never reach the test runner's worker (a late one would end the worker)."""
    code = "import os, signal, time\nfrom slimformer.searcher.backends.signals import stop_guard\n"
    return subprocess.run([sys.executable, "-c", code + textwrap.dedent(body)], capture_output=True, text=True,
                          timeout=120)


def test_stop_waits_for_a_protected_section():
    res = _in_own_process("""
        with stop_guard() as guard:
            reached = []
            try:
                with guard.protected():
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(0.05)
                    reached.append("after the signal")  # the write goes on
            except KeyboardInterrupt:
                print("interrupted after", reached, guard.requested)
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "interrupted after ['after the signal'] True"


def test_stop_abandons_an_interruptible_section():
    res = _in_own_process("""
        with stop_guard() as guard:
            reached = []
            try:
                with guard.protected():
                    with guard.interruptible():
                        os.kill(os.getpid(), signal.SIGTERM)
                        time.sleep(0.05)
                        reached.append("not reached")
            except KeyboardInterrupt:
                print("abandoned", reached)
            try:  # no new candidate starts once a stop is requested
                with guard.interruptible():
                    print("started")
            except KeyboardInterrupt:
                print("refused")
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:2] == ["abandoned []", "refused"]


def test_handlers_are_restored():
    before = signal.getsignal(signal.SIGINT)
    with stop_guard():
        assert isinstance(signal.getsignal(signal.SIGINT), type(StopGuard()._handler))
    assert signal.getsignal(signal.SIGINT) is before


def test_second_signal_exits_at_once():
    code = textwrap.dedent("""
        import os, signal, time
        from slimformer.searcher.backends.signals import stop_guard
        with stop_guard() as g:
            with g.protected():
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(30)
        print("not reached")
    """)
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 130 and time.monotonic() - t0 < 25
    assert "second interrupt" in res.stderr and "not reached" not in res.stdout


def _study(path):
    return optuna.load_study(study_name="study", storage=f"sqlite:///{path.parent / 'study.db'}")


def _wait(path, predicate, deadline=300):
    end = time.time() + deadline
    while time.time() < end:
        time.sleep(0.2)
        try:
            trials = _study(path).get_trials(deepcopy=False)
        except Exception:  # noqa: BLE001 - not created yet
            continue
        if predicate(trials):
            return trials
    raise AssertionError("the search never reached the expected state")


def test_double_ctrl_c_then_resume(tmp_path, make_study, cli, start):
    path = make_study(search={"trials": 4, "isolate": False})
    proc = start(path, hang=1)  # trial 1 runs until interrupted
    trials = _wait(path, lambda ts: sum(t.state == TrialState.COMPLETE for t in ts) >= 1 and
                   any(t.number == 1 and t.state == TrialState.RUNNING and "plan" in t.user_attrs for t in ts))
    finished = {t.number: t.values for t in trials if t.state == TrialState.COMPLETE}
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and time.monotonic() - t0 < 30
    assert "Traceback" not in err
    conn = sqlite3.connect(path.parent / "study.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    res = cli("search", path)
    assert res.returncode == 0, res.stderr[-3000:]
    after = {t.number: t for t in _study(path).get_trials()}
    assert not [t for t in after.values() if t.state == TrialState.RUNNING]  # none left running forever
    for number, values in finished.items():
        assert after[number].state == TrialState.COMPLETE and after[number].values == values
    assert sum(t.state == TrialState.COMPLETE for t in after.values()) == 4


@pytest.mark.slow
def test_sigterm_abandons_a_hung_isolated_trial(tmp_path, make_study):
    """An isolated trial that hangs is abandoned by SIGTERM at once: recorded, queued again,
    its worker killed (no orphan), exit 130."""
    path = make_study(search={"trials": 3, "isolate": True, "trial_timeout": 600})
    env = {**os.environ, "SLIMFORMER_FAULT": "hang:1"}
    proc = subprocess.Popen([sys.executable, "-m", "slimformer.searcher.cli", "search", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _wait(path, lambda ts: any(t.number == 1 and t.state == TrialState.RUNNING and "plan" in t.user_attrs for t in ts))
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "Resume with the same command" in err and "Traceback" not in err
    worker = int(err.split("isolated trial worker started (pid ")[1].split(")")[0])
    assert not os.path.exists(f"/proc/{worker}") or "zombie" in open(f"/proc/{worker}/status").read()
    trials = _study(path).get_trials()
    hung = trials[1]
    assert hung.state == TrialState.FAIL and "interrupted" in hung.user_attrs["fail_reason"]
    retry = [t for t in trials if t.user_attrs.get("retry_of") == 1][0]  # queued: its plan is fixed_params
    assert retry.system_attrs["fixed_params"] == hung.params
