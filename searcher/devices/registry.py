"""The runtimes a candidate can be timed and handed over in. Adding one: a module in this package
that defines `RUNTIME` (a `Runtime`), and its line below."""

from __future__ import annotations

from ..errors import UserError
from . import compiled, eager, onnxruntime, openvino
from .runtime import Runtime

__all__ = ["RUNTIMES", "get_runtime", "check_runtime", "check_space", "profiled_runtimes"]

RUNTIMES: dict[str, Runtime] = {m.RUNTIME.name: m.RUNTIME for m in (eager, compiled, onnxruntime, openvino)}


def get_runtime(name: str) -> Runtime:
    if name not in RUNTIMES:
        raise UserError(f"device.runtime: unknown runtime {name!r}; allowed: {', '.join(RUNTIMES)}")
    return RUNTIMES[name]


def check_runtime(name: str) -> Runtime:
    """The runtime, after UserError for an unknown name or one that is not installed."""
    runtime = get_runtime(name)
    runtime.require()
    return runtime


def check_space(name: str, bits, quant_methods, where: str = "study") -> None:
    """UserError when the searched space holds bit-widths or rounding the runtime cannot run as built."""
    runtime = get_runtime(name)
    for b in bits:
        if runtime.refusal(b):
            raise UserError(f"{where}: space.bits: {runtime.refusal(b)}; leave {b} out")
    if 8 in bits:
        for method in quant_methods:
            if method in runtime.refused_methods:
                raise UserError(f"{where}: space.quant_method: {method} cannot run as searched with device.runtime "
                                f"{name} ({runtime.refused_methods[method]}); leave {method} out, or 8 out of space.bits")


def profiled_runtimes() -> tuple[str, ...]:
    return tuple(n for n, r in RUNTIMES.items() if r.profiled)
