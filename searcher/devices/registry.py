"""The runtimes a candidate can be timed and handed over in. Adding one: a module in this package
that defines `RUNTIME` (a `Runtime`), and its line below.

`device.runtime: auto` is not a runtime of its own: the installed runtimes that compete
(`Runtime.competes`) each time every candidate against the one baseline, and the fastest counts."""

from __future__ import annotations

from ..errors import UserError
from . import compiled, eager, onnxruntime, openvino
from .runtime import Runtime

__all__ = ["RUNTIMES", "AUTO", "get_runtime", "check_runtime", "check_space", "profiled_runtimes",
           "study_runtimes", "runtimes_for_bits", "space_refusal"]

RUNTIMES: dict[str, Runtime] = {m.RUNTIME.name: m.RUNTIME for m in (eager, compiled, onnxruntime, openvino)}
AUTO = "auto"


def _allowed() -> str:
    return ", ".join([*RUNTIMES, AUTO])


def get_runtime(name: str) -> Runtime:
    if name not in RUNTIMES:
        raise UserError(f"device.runtime: unknown runtime {name!r}; allowed: {_allowed()}")
    return RUNTIMES[name]


def study_runtimes(name: str) -> tuple[str, ...]:
    """The runtimes a study's candidates are timed in: the named one, or for `auto` every installed
    runtime that competes (eager PyTorch always does)."""
    if name == AUTO:
        return tuple(n for n, r in RUNTIMES.items() if r.competes and r.installed())
    return (get_runtime(name).name,)


def check_runtime(name: str) -> tuple[str, ...]:
    """The study's runtimes, after UserError for an unknown name or one that is not installed."""
    names = study_runtimes(name)
    for n in names:
        RUNTIMES[n].require()
    return names


def runtimes_for_bits(name: str, bits) -> tuple[str, ...]:
    """The study's runtimes that run every bit-width in `bits` (a plan's layers) as built."""
    return tuple(n for n in study_runtimes(name) if not any(RUNTIMES[n].refusal(b) for b in set(bits)))


def space_refusal(name: str, bits: int) -> str | None:
    """Why no runtime of the study can run layers of `bits`, or None when one can."""
    reasons = [RUNTIMES[n].refusal(bits) for n in study_runtimes(name)]
    return None if not all(reasons) else "; ".join(reasons)


# a space dimension only some runtimes read: the Runtime flag saying so, and what its readers do
_READ_BY = {"int8_weights": ("reads_int8_weights", "quantizes int8 layers itself"),
            "attention": ("reads_attention", "run the PyTorch module")}


def check_space(name: str, bits, quant_methods, where: str = "study", int8_weights=(), attention=()) -> None:
    """UserError when the searched space holds bit-widths or rounding the runtime cannot run as built
    (with `auto`: that none of the competing runtimes can), or int8 weight types or attention
    implementations no runtime of the study reads."""
    for key, choices in (("int8_weights", int8_weights), ("attention", attention)):
        flag, what = _READ_BY[key]
        if len(choices) > 1 and not any(getattr(RUNTIMES[n], flag) for n in study_runtimes(name)):
            readers = ", ".join(n for n, r in RUNTIMES.items() if getattr(r, flag))
            raise UserError(f"{where}: space.{key}: no runtime of device.runtime {name} reads it (only {readers} "
                            f"{what}); remove space.{key}")
    for b in bits:
        refusal = space_refusal(name, b)
        if refusal:
            raise UserError(f"{where}: space.bits: {refusal}; leave {b} out")
    if 8 in bits:
        for method in quant_methods:
            runtimes = [RUNTIMES[n] for n in study_runtimes(name)]
            if all(method in r.refused_methods for r in runtimes):
                why = "; ".join(r.refused_methods[method] for r in runtimes)
                raise UserError(f"{where}: space.quant_method: {method} cannot run as searched with device.runtime "
                                f"{name} ({why}); leave {method} out, or 8 out of space.bits")


def profiled_runtimes() -> tuple[str, ...]:
    return tuple(n for n, r in RUNTIMES.items() if r.profiled)
