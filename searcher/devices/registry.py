"""The runtimes a candidate can be timed and handed over in. Adding one: a module in this package
that defines `RUNTIME` (a `Runtime`), and its line below.

`device.runtime: auto` is not a runtime of its own: the installed runtimes that compete
(`Runtime.competes`) each time every candidate against the one baseline, and the fastest counts.

The study's runtime set is decided once (`check_runtime`: from device.runtime and what is
installed; the Workbench holds it as `Workbench.runtimes`); every other function here takes that
set (a tuple of names): which of them run a plan (`runtimes_for_plan`, `plan_refusals`), which
counts (`fastest`), their number formats and what the space may search (`study_formats`,
`native_choices`, `check_space`)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

from slimformer.methods import Plan

from ..errors import UserError
from . import compiled, eager, onnxruntime, openvino
from .runtime import Runtime

__all__ = ["RUNTIMES", "AUTO", "get_runtime", "check_runtime", "check_space", "profiled_runtimes",
           "study_runtimes", "kept_bits", "runtimes_for_plan", "plan_refusals", "fastest", "space_refusal",
           "study_formats", "native_choices"]

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


def kept_bits(resolved: Plan) -> list[int]:
    """The bit-widths of the layers a resolved plan keeps (what a runtime's kernels must run)."""
    return [resolved.bits[i] for i in resolved.layers]


def runtimes_for_plan(runtimes: Sequence[str], resolved: Plan) -> tuple[str, ...]:
    """Those of the study's `runtimes` that run the resolved plan as built, on this CPU."""
    bits = kept_bits(resolved)
    return tuple(n for n in runtimes if RUNTIMES[n].plan_refusal(bits, resolved.int8_scheme) is None)


def plan_refusals(runtimes: Sequence[str], resolved: Plan) -> str:
    """Why each of the study's `runtimes` cannot run the resolved plan on this CPU (one line)."""
    bits = kept_bits(resolved)
    return "; ".join(RUNTIMES[n].plan_refusal(bits, resolved.int8_scheme) or f"{n} can" for n in runtimes)


def fastest(speedups: Mapping[Hashable, float]):
    """The key with the highest speedup: the runtime (or runtime and scheme) that counts when a
    candidate ran in several; on a tie, the first."""
    return max(speedups, key=speedups.get)


def _label(runtimes: Sequence[str]) -> str:
    return runtimes[0] if len(runtimes) == 1 else f"{AUTO} ({', '.join(runtimes)})"


def space_refusal(runtimes: Sequence[str], bits: int, scheme: str = "dynamic") -> str | None:
    """Why none of the study's `runtimes` can run layers of `bits` (int8: in `scheme`), or None when one can."""
    reasons = [RUNTIMES[n].refusal(bits, scheme) for n in runtimes]
    return None if not all(reasons) else "; ".join(reasons)


def study_formats(runtimes: Sequence[str]) -> dict[str, list[str]]:
    """runtime -> the number formats it runs on a real kernel on this CPU, for the study's `runtimes` (the
    device facts a study stores and `report` shows)."""
    return {n: list(RUNTIMES[n].native_formats()) for n in runtimes}


def native_choices(runtimes: Sequence[str], fast_bf16: bool) -> tuple[list[int], list[str]]:
    """(bit-widths, int8 schemes) a space searches by default on this device: 32 and 8 always; 16 where a
    runtime of the study runs bfloat16 on a real kernel AND the CPU computes it natively (`fast_bf16`:
    AVX512-BF16 or AMX; elsewhere bf16 is emulated and never pays); the static int8 scheme where a
    runtime of the study calibrates int8 activations on this CPU."""
    formats = {f for fs in study_formats(runtimes).values() for f in fs}
    bits = [32, *([16] if fast_bf16 and "bfloat16" in formats else []), 8]
    return bits, ["dynamic", *(["static"] if "int8_static" in formats else [])]


# a space dimension only some runtimes read: the Runtime flag saying so, and what its readers do
_READ_BY = {"int8_weights": ("reads_int8_weights", "quantizes int8 layers itself"),
            "attention": ("reads_attention", "run the PyTorch module")}


def check_space(runtimes: Sequence[str], bits, quant_methods, where: str = "study", int8_weights=(), attention=(),
                int8_schemes=(), shared_bits: bool = False) -> None:
    """UserError when the searched space holds bit-widths or rounding the study's `runtimes` cannot run
    as built (with several: that none of them can), or int8 weight types or attention implementations
    no runtime of the study reads."""
    runtimes = tuple(runtimes)
    for key, choices in (("int8_weights", int8_weights), ("attention", attention)):
        flag, what = _READ_BY[key]
        if len(choices) > 1 and not any(getattr(RUNTIMES[n], flag) for n in runtimes):
            readers = ", ".join(n for n, r in RUNTIMES.items() if getattr(r, flag))
            raise UserError(f"{where}: space.{key}: no runtime of device.runtime {_label(runtimes)} reads it (only "
                            f"{readers} {what}); remove space.{key}")
    for b in bits:
        refusal = space_refusal(runtimes, b)
        if refusal:
            raise UserError(f"{where}: space.bits: {refusal}; leave {b} out")
    declared = [RUNTIMES[n] for n in runtimes]
    if {32, 16} <= set(bits) and not shared_bits and all(r.model_wide_precision for r in declared):
        raise UserError(f"{where}: space.bits: {declared[0].plan_refusal([32, 16])}; tie bits shared "
                        "(one bit-width for all layers), or leave 32 or 16 out")
    for scheme in int8_schemes:
        refusal = space_refusal(runtimes, 8, scheme)
        if refusal:
            raise UserError(f"{where}: space.int8_scheme: {refusal}; leave {scheme} out")
    if 8 in bits:
        for method in quant_methods:
            if all(method in r.refused_methods for r in declared):
                why = "; ".join(r.refused_methods[method] for r in declared)
                raise UserError(f"{where}: space.quant_method: {method} cannot run as searched with device.runtime "
                                f"{_label(runtimes)} ({why}); leave {method} out, or 8 out of space.bits")


def profiled_runtimes() -> tuple[str, ...]:
    return tuple(n for n, r in RUNTIMES.items() if r.profiled)
