"""Fault injection for tests and the reliability benchmark.

`SLIMFORMER_FAULT=hang:3,segv:5,oom:7,raise:2,exit:4` makes the process that evaluates a
candidate hang, segfault, allocate memory without bound, raise, or exit when it reaches
those trial numbers. With trial isolation that is the worker (the study records the failure
and goes on); without it, it is the search process itself, which lets tests stop a search at
a known point (a `hang` trial stays RUNNING until the process is killed or interrupted)
instead of racing a trial that may finish first.
"""

from __future__ import annotations

import os
import signal
import time

__all__ = ["FAULT_ENV", "FAULTS", "parse_faults", "inject", "fault_for"]

FAULT_ENV = "SLIMFORMER_FAULT"
FAULTS = ("hang", "segv", "oom", "raise", "exit")


def parse_faults(text: str) -> dict[int, str]:
    """'hang:3,segv:5' -> {3: 'hang', 5: 'segv'}; malformed entries are ignored."""
    out = {}
    for item in (text or "").split(","):
        kind, _, number = item.strip().partition(":")
        if kind in FAULTS and number.strip().isdigit():
            out[int(number)] = kind
    return out


def fault_for(number: int) -> str | None:
    """The fault configured for this trial number in this process's environment, if any."""
    return parse_faults(os.environ.get(FAULT_ENV, "")).get(number)


def inject(kind: str | None) -> None:
    if kind == "hang":
        while True:
            time.sleep(0.5)  # short sleeps: a signal handler that raises gets to run promptly
    if kind == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    if kind == "oom":
        hog = []
        while True:
            hog.append(b"\x01" * (64 << 20))  # touched pages: resident memory grows ~64 MB a step
    if kind == "raise":
        raise RuntimeError("injected fault")
    if kind == "exit":
        os._exit(3)
