"""Eager PyTorch: the module as `apply_plan` built it (bits 8: torch.ao dynamic int8 Linear on a real
int8 kernel; bits 16: bfloat16 with cast hooks, fast only with AMX/AVX512-BF16).

It is also the runtime of the one baseline: every speedup is measured against the uncompressed float32
model in eager PyTorch with the faster of transformers' stock attention implementations
(searcher/devices/attention.py)."""

from __future__ import annotations

from .runtime import Runtime

__all__ = ["RUNTIME", "pytorch_formats"]

STATIC = "PyTorch runs int8 layers with dynamic activation quantization only (torch.ao dynamic Linear)"


def pytorch_formats() -> dict[str, str | None]:
    """bfloat16 runs on any CPU PyTorch runs on (fast only with AVX512-BF16/AMX: the default space asks
    the CPU flags), int8 where a quantized engine exists; no static int8."""
    from slimformer.methods.quantize import int8_available

    return {"float32": None, "bfloat16": None, "int8_static": STATIC,
            "int8": None if int8_available() else "this PyTorch build has no quantized engine"}

def _runner(model, inputs, threads):
    return lambda: model(**inputs)


RUNTIME = Runtime(name="eager", summary="PyTorch eager (default)", artifact_format="pytorch", formats=pytorch_formats,
                  profiled=True, reads_attention=True, make_runner=_runner)
