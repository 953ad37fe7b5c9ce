"""Eager PyTorch: the module as `apply_plan` built it (bits 8: torch.ao dynamic int8 Linear on a real
int8 kernel; bits 16: bfloat16 with cast hooks, fast only with AMX/AVX512-BF16).

It is also the runtime of the one baseline: every speedup is measured against the uncompressed float32
model in eager PyTorch with the faster of transformers' stock attention implementations
(searcher/devices/attention.py)."""

from __future__ import annotations

from .runtime import Runtime

__all__ = ["RUNTIME"]

def _runner(model, inputs, threads):
    return lambda: model(**inputs)


RUNTIME = Runtime(name="eager", summary="PyTorch eager (default)", artifact_format="pytorch", real_bits=(32, 16, 8),
                  profiled=True, reads_attention=True, make_runner=_runner)
