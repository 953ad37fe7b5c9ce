"""The attention implementation of the one baseline: transformers' stock ones (`sdpa`, `eager`) timed
on float32 copies of the uncompressed model in interleaved rounds, once per study; the faster is
stored with the study's baseline, and every candidate built in PyTorch uses it too unless its plan
names one (`plan.attention`, searched by `space.attention`)."""

from __future__ import annotations

import copy

from slimformer.methods.plan import ATTENTION_IMPLEMENTATIONS
from slimformer.methods.surgery import attention_of, set_attention

from .eager import RUNTIME as EAGER
from .latency import measure_latency

__all__ = ["fastest_attention"]


def fastest_attention(model, inputs: dict, threads: int, rounds: int, warmup: int) -> tuple[str | None, dict]:
    """(the faster stock attention implementation of `model`, {implementation: median ms}), timed in
    interleaved rounds on float32 copies; ({}, current) when the model can use only one."""
    copies = {}
    for name in ATTENTION_IMPLEMENTATIONS:
        m = copy.deepcopy(model)
        if set_attention(m, name):
            copies[name] = m.eval()
    if len(copies) < 2:
        return attention_of(model), {}
    lat = measure_latency({name: EAGER.make_runner(m, inputs, threads) for name, m in copies.items()}, rounds=rounds,
                          warmup=warmup, threads=threads)
    ms = {name: res.median_ms for name, res in lat.items()}
    return min(ms, key=ms.get), ms
