"""Latency protocol (DESIGN.md §6): warm-up, then interleaved rounds of every model in the
same process at a fixed thread count; median and spread per model; speedup of each against
the baseline from the same rounds; device facts recorded with every figure.

Every timed call starts after IDLE_GAP_MS of idle time, so no call runs while the threads of the
call before it (another runtime's pool, PyTorch's OpenMP workers) are still settling: without the
gap, a candidate's speedup depended on which runners shared its rounds (benchmarks/results/
interleaving_results.md: OpenVINO 3.42x timed alone with the baseline, 3.70x beside the
candidate's other runtimes; with a 10 ms gap 4.05x and 3.91x; ONNX Runtime 3.38x and 3.22x, then
3.55x and 3.58x). 50 ms of idle time slows the next call instead (cooler caches)."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch

__all__ = ["LatencyResult", "measure_latency", "device_facts", "fixed_threads", "IDLE_GAP_MS", "cpu_refusal", "Elapsed"]

IDLE_GAP_MS = 10.0  # idle time before every timed call (see above)


class Elapsed(float):
    """A runner's own measure of its call in ms, returned by it: `measure_latency` takes it instead of the
    wall time (a call that must do more than the phase it times, e.g. GenAI's decode after its prefill)."""


@dataclass
class LatencyResult:
    median_ms: float
    p10_ms: float
    p90_ms: float
    iqr_ms: float
    samples_ms: list[float] = field(repr=False)
    speedup: float | None = None  # baseline median / this median, same rounds

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("samples_ms")
        return d


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile", "avx_vnni")
                return [f for f in wanted if f in flags]
    except OSError:
        pass
    return []


def device_facts(threads: int | None = None, runtime: str = "eager") -> dict:
    """What a timing was measured on: CPU model, ISA flags (AMX/VNNI...), cores, threads, versions."""
    import os

    facts = {
        "cpu": _cpu_model(),
        "flags": _cpu_flags(),
        "cores": os.cpu_count(),
        "threads": threads or torch.get_num_threads(),
        "torch": torch.__version__,
        "runtime": runtime,
        "python": platform.python_version(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),  # as the environment gave it to libgomp
    }
    from .registry import RUNTIMES

    if runtime in RUNTIMES and RUNTIMES[runtime].version is not None:
        facts[runtime] = RUNTIMES[runtime].version()
    if torch.cuda.is_available():
        facts["cuda_device"] = torch.cuda.get_device_name(0)
    return facts


def cpu_refusal(study_facts: dict | None) -> str | None:
    """Why this machine may not time candidates for a study measured on `study_facts` (its stored
    device facts): another CPU model or other ISA flags make another device, whose figures must not
    go into the study's front. None when it is the same CPU (or the study stored no facts)."""
    if not study_facts or "cpu" not in study_facts:
        return None
    here = {"cpu": _cpu_model(), "flags": _cpu_flags()}
    want = {"cpu": study_facts["cpu"], "flags": list(study_facts.get("flags", []))}
    if here["cpu"] == want["cpu"] and sorted(here["flags"]) == sorted(want["flags"]):
        return None
    return (f"refused for timing: this machine's CPU ({here['cpu']}; {' '.join(here['flags']) or 'no listed flags'}) "
            f"is not the study's device ({want['cpu']}; {' '.join(want['flags']) or 'no listed flags'}); "
            "run the study's trials on machines with the study's CPU, or start a study for this one")


@contextmanager
def fixed_threads(n: int | None):
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def measure_latency(
    runners: dict[str, Callable[[], object]],
    baseline: str | None = None,
    rounds: int = 30,
    warmup: int = 5,
    threads: int | None = None,
    repeat: int = 1,
    gap_ms: float = IDLE_GAP_MS,
) -> dict[str, LatencyResult]:
    """Time every runner (a no-argument callable doing one inference) in interleaved rounds.

    Each round calls every runner `repeat` times (the round's figure is the mean per call),
    so noise from other work on the machine hits all models alike; `gap_ms` of idle time
    precede every timed call. `baseline` names the runner the speedups are computed against.
    """
    if baseline is not None and baseline not in runners:
        raise ValueError(f"baseline {baseline!r} is not one of the runners {list(runners)}")
    samples: dict[str, list[float]] = {name: [] for name in runners}
    with fixed_threads(threads), torch.inference_mode():
        for _ in range(warmup):
            for fn in runners.values():
                fn()
        names = list(runners)
        for r in range(rounds):
            order = names if r % 2 == 0 else names[::-1]  # alternate order: no model always goes first
            for name in order:
                fn = runners[name]
                time.sleep(gap_ms / 1e3)
                t0 = time.perf_counter()
                got = [fn() for _ in range(repeat)]
                wall = (time.perf_counter() - t0) * 1e3
                own = all(isinstance(x, Elapsed) for x in got)
                samples[name].append((sum(got) if own else wall) / repeat)
    out = {}
    for name, xs in samples.items():
        out[name] = LatencyResult(
            median_ms=statistics.median(xs),
            p10_ms=_quantile(xs, 0.1),
            p90_ms=_quantile(xs, 0.9),
            iqr_ms=_quantile(xs, 0.75) - _quantile(xs, 0.25),
            samples_ms=xs,
        )
    if baseline is not None:
        # speedup from paired rounds: median of per-round ratios is robust to drifting load
        base = samples[baseline]
        for name, res in out.items():
            res.speedup = statistics.median(b / c for b, c in zip(base, samples[name]))
    return out
