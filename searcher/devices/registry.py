"""The runtimes a candidate can be timed and handed over in. Adding one: a module in this package
that defines `RUNTIME` (a `Runtime`), and its line below.

`device.runtime: auto` is not a runtime of its own: the installed runtimes that compete
(`Runtime.competes`) each time every candidate against the one baseline, and the fastest counts."""

from __future__ import annotations

from ..errors import UserError
from . import compiled, eager, onnxruntime, openvino
from .runtime import Runtime

__all__ = ["RUNTIMES", "AUTO", "get_runtime", "check_runtime", "check_space", "profiled_runtimes",
           "study_runtimes", "runtimes_for_bits", "space_refusal", "study_formats", "native_choices"]

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


def runtimes_for_bits(name: str, bits, scheme: str = "dynamic") -> tuple[str, ...]:
    """The study's runtimes that run a plan whose kept layers have the bit-widths `bits` (int8 layers in
    `scheme`) as built, on this CPU."""
    return tuple(n for n in study_runtimes(name) if RUNTIMES[n].plan_refusal(bits, scheme) is None)


def space_refusal(name: str, bits: int, scheme: str = "dynamic") -> str | None:
    """Why no runtime of the study can run layers of `bits` (int8: in `scheme`), or None when one can."""
    reasons = [RUNTIMES[n].refusal(bits, scheme) for n in study_runtimes(name)]
    return None if not all(reasons) else "; ".join(reasons)


def study_formats(name: str) -> dict[str, list[str]]:
    """runtime -> the number formats it runs on a real kernel on this CPU, for the study's runtimes (the
    device facts a study stores and `report` shows)."""
    return {n: list(RUNTIMES[n].native_formats()) for n in study_runtimes(name)}


def native_choices(name: str, fast_bf16: bool) -> tuple[list[int], list[str]]:
    """(bit-widths, int8 schemes) a space searches by default on this device: 32 and 8 always; 16 where a
    runtime of the study runs bfloat16 on a real kernel AND the CPU computes it natively (`fast_bf16`:
    AVX512-BF16 or AMX; elsewhere bf16 is emulated and never pays); the static int8 scheme where a
    runtime of the study calibrates int8 activations on this CPU."""
    formats = {f for fs in study_formats(name).values() for f in fs}
    bits = [32, *([16] if fast_bf16 and "bfloat16" in formats else []), 8]
    return bits, ["dynamic", *(["static"] if "int8_static" in formats else [])]


# a space dimension only some runtimes read: the Runtime flag saying so, and what its readers do
_READ_BY = {"int8_weights": ("reads_int8_weights", "quantizes int8 layers itself"),
            "attention": ("reads_attention", "run the PyTorch module")}


def check_space(name: str, bits, quant_methods, where: str = "study", int8_weights=(), attention=(),
                int8_schemes=(), shared_bits: bool = False) -> None:
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
    runtimes = [RUNTIMES[n] for n in study_runtimes(name)]
    if {32, 16} <= set(bits) and not shared_bits and all(r.model_wide_precision for r in runtimes):
        raise UserError(f"{where}: space.bits: {runtimes[0].plan_refusal([32, 16])}; tie bits shared "
                        "(one bit-width for all layers), or leave 32 or 16 out")
    for scheme in int8_schemes:
        refusal = space_refusal(name, 8, scheme)
        if refusal:
            raise UserError(f"{where}: space.int8_scheme: {refusal}; leave {scheme} out")
    if 8 in bits:
        for method in quant_methods:
            runtimes = [RUNTIMES[n] for n in study_runtimes(name)]
            if all(method in r.refused_methods for r in runtimes):
                why = "; ".join(r.refused_methods[method] for r in runtimes)
                raise UserError(f"{where}: space.quant_method: {method} cannot run as searched with device.runtime "
                                f"{name} ({why}); leave {method} out, or 8 out of space.bits")


def profiled_runtimes() -> tuple[str, ...]:
    return tuple(n for n, r in RUNTIMES.items() if r.profiled)
