"""torch.compile: the built module compiled for the study's fixed input shape (same kernels choice as
eager for int8 and bf16 layers). It does not compete under `device.runtime: auto`: compiling every
candidate costs tens of seconds on a CPU, more than timing it."""

from __future__ import annotations

from .eager import pytorch_formats
from .runtime import Runtime

__all__ = ["RUNTIME"]


def _runner(model, inputs, threads):
    import torch

    compiled = torch.compile(model, dynamic=False)
    return lambda: compiled(**inputs)


RUNTIME = Runtime(name="compile", summary="torch.compile", artifact_format="pytorch", formats=pytorch_formats,
                  fresh_process_cost="torch.compile recompiles every candidate in each fresh worker process",
                  competes=False, reads_attention=True, make_runner=_runner)
