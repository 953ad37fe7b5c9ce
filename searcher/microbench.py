"""The microbenchmarks behind a device profile (see `searcher.profile`).

Every measurement is a "job" (a factory returning named no-argument callables). All jobs run
in `passes` shuffled passes; a cell's figure is the best (minimum) of its repetitions over
all passes: the kernel's cost when nothing else competes for the cores, which is what a
machine shared with other work gets closest to. Shuffling spreads a burst of load from
other processes over random cells rather than whole rows. Tables are then made monotone
along every axis.
"""

from __future__ import annotations

import random
import time
import warnings
from collections.abc import Callable

import numpy as np

__all__ = ["run_benchmarks", "grid_widths", "DTYPE_BITS"]

DTYPE_BITS = {"float32": 32, "bfloat16": 16, "int8": 8}
OVERHEAD_LAYERS, OVERHEAD_FFN = 4, 32

Job = Callable[[], list[tuple[tuple, Callable[[], object]]]]


def grid_widths(hidden_sizes: tuple[int, ...], quick: bool) -> list[int]:
    """Feature widths measured: 0, 32, 64 and fractions/multiples of every hidden size."""
    fracs = (0.25, 0.5, 1, 2, 4) if quick else (1 / 6, 1 / 3, 0.5, 2 / 3, 1, 1.5, 2, 3, 4)
    return sorted({0, 32, 64} | {max(8, int(round(h * f / 8)) * 8) for h in hidden_sizes for f in fracs})


def _monotone(arr) -> np.ndarray:
    """Running maximum along every axis: a larger shape never looks cheaper than a smaller one."""
    out = np.asarray(arr, dtype=float)
    for axis in range(out.ndim):
        out = np.maximum.accumulate(out, axis=axis)
    return out


def _time_ms(fn, sync, budget_s: float, min_reps: int, max_reps: int) -> float:
    fn()
    sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return min(times)


def _torch_dtype(dt: str):
    import torch

    return torch.bfloat16 if dt == "bfloat16" else torch.float32


def _linear_job(dt: str, k: int, n: int, tokens, device) -> Job:
    def make():
        import torch
        from torch import nn

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zero-width init warns; torch.ao dynamic quant is deprecated
            if dt == "int8" and k and n:
                from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

                mod = quantize_dynamic(nn.Sequential(nn.Linear(k, n)), {nn.Linear: per_channel_dynamic_qconfig},
                                       dtype=torch.qint8)
            else:  # int8 cannot hold a zero-width layer: the float32 no-op stands in
                mod = nn.Linear(k, n).to(device, _torch_dtype(dt))
        xs = {t: torch.randn(t, k, device=device, dtype=_torch_dtype(dt)) for t in tokens}
        return [(("linear", dt, t, k, n), lambda x=xs[t]: mod(x)) for t in tokens]

    return make


def _activation_job(dt: str, tokens, widths, device) -> Job:
    def make():
        import torch
        import torch.nn.functional as F

        out = []
        for t in tokens:
            for w in widths:
                x = torch.randn(t, w, device=device, dtype=_torch_dtype(dt))
                out.append((("activation", dt, t, w), lambda x=x: F.gelu(x)))
        return out

    return make


def _attention_job(dt: str, d: int, h: int, seqs, device) -> Job:
    def make():
        import torch
        import torch.nn.functional as F

        out = []
        for s in seqs:
            qkv = [torch.randn(1, s, h * d, device=device, dtype=_torch_dtype(dt)) for _ in range(3)]

            def core(qkv=qkv, s=s):  # as transformers' sdpa path does it: views in, contiguous out
                q, k, v = (x.view(1, s, h, d).transpose(1, 2) for x in qkv)
                o = F.scaled_dot_product_attention(q, k, v, scale=d**-0.5)
                return o.transpose(1, 2).contiguous().reshape(1, s, h * d)

            out.append((("attention", dt, d, h, s), core))
        return out

    return make


def _overhead_job(hidden: int, d: int, dtypes, tokens, device) -> Job:
    """Tiny random BERT models built by `apply_plan` exactly as the product builds them:
    no layers (embeddings + pooler), and per dtype OVERHEAD_LAYERS layers of one head and
    OVERHEAD_FFN neurons, with attention and (not int8, which cannot hold 0-width layers)
    without."""

    def make():
        import torch
        import transformers
        from slimformer.methods import Plan, apply_plan

        config = transformers.BertConfig(
            vocab_size=512, hidden_size=hidden, num_attention_heads=max(1, hidden // d), intermediate_size=4 * hidden,
            num_hidden_layers=OVERHEAD_LAYERS, max_position_embeddings=max(tokens) + 2, attn_implementation="sdpa",
        )
        torch.manual_seed(0)
        base = transformers.BertModel(config).eval()
        models = {("embed",): apply_plan(base, Plan(layers=[]))}
        for dt in dtypes:
            bits = DTYPE_BITS[dt]
            models[("attn", dt)] = apply_plan(base, Plan(heads=1, ffn=OVERHEAD_FFN, bits=bits))
            if dt != "int8":
                models[("noattn", dt)] = apply_plan(base, Plan(heads=0, ffn=OVERHEAD_FFN, bits=bits))
        out = []
        for t in tokens:
            ids = torch.randint(0, 512, (1, t), device=device)
            kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            for what, model in models.items():
                model.to(device)
                out.append((("model", hidden, t, *what), lambda m=model, kw=kwargs: m(**kw)))
        return out

    return make


def run_benchmarks(
    *, dtypes, tokens, widths, heads_grid, head_dims, hidden_sizes, device, passes, quick, step,
) -> dict:
    """All raw timings {key: ms}; `step(description, total)` drives a progress display."""
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    budget, max_reps = (0.01, 5) if quick else (0.015, 9)
    jobs: list[tuple[int, Job]] = []
    for dt in dtypes:
        jobs += [(len(tokens), _linear_job(dt, k, n, tokens, device)) for k in widths for n in widths]
    for dt in ("float32", "bfloat16"):
        jobs.append((len(tokens) * len(widths), _activation_job(dt, tokens, widths, device)))
        jobs += [(len(tokens), _attention_job(dt, d, h, tokens, device)) for d in head_dims for h in heads_grid]
    n_models = 1 + 2 * len(dtypes) - ("int8" in dtypes)
    jobs += [(len(tokens) * n_models, _overhead_job(h, head_dims[0], dtypes, tokens, device)) for h in hidden_sizes]
    total = passes * sum(n for n, _ in jobs)
    best: dict[tuple, float] = {}
    with torch.inference_mode():
        for p in range(passes):
            order = list(jobs)
            random.Random(p).shuffle(order)
            for _, make in order:
                for key, fn in make():
                    ms = _time_ms(fn, sync, budget, 3, max_reps)
                    best[key] = min(ms, best.get(key, float("inf")))
                    step(f"pass {p + 1}/{passes} {key[0]}", total)
    return best


def linear_tables(raw: dict, dtypes, tokens, widths) -> dict:
    out = {}
    for dt in dtypes:
        ms = [[[raw[("linear", dt, t, k, n)] for n in widths] for k in widths] for t in tokens]
        out[dt] = {"tokens": list(tokens), "in": list(widths), "out": list(widths), "ms": _monotone(ms).tolist()}
    return out


def activation_tables(raw: dict, tokens, widths) -> dict:
    return {dt: {"tokens": list(tokens), "width": list(widths),
                 "ms": _monotone([[raw[("activation", dt, t, w)] for w in widths] for t in tokens]).tolist()}
            for dt in ("float32", "bfloat16")}


def attention_tables(raw: dict, head_dims, heads_grid, seqs) -> dict:
    return {dt: {str(d): {"heads": list(heads_grid), "seq": list(seqs),
                          "ms": _monotone([[raw[("attention", dt, d, h, s)] for s in seqs] for h in heads_grid]).tolist()}
                 for d in head_dims}
            for dt in ("float32", "bfloat16")}


def overhead_table(raw: dict, dtypes, hidden_sizes, tokens, d: int) -> dict:
    """Per-layer and attention-block cost beyond the kernels, from the tiny-model timings.

    layer_ms[dt] = (model without attention - embeddings) / L - its kernels;
    attn_ms[dt] = (model with one head - embeddings) / L - its kernels - layer_ms[dt].
    int8 has no 0-head model: its attention glue is taken as float32's.
    """
    f, n_layers = OVERHEAD_FFN, OVERHEAD_LAYERS
    shape = (len(hidden_sizes), len(tokens))
    embed = np.zeros(shape)
    layer = {dt: np.zeros(shape) for dt in dtypes}
    attn = {dt: np.zeros(shape) for dt in dtypes}

    def lin(dt, t, k, n):
        return raw[("linear", dt, t, k, n)]

    for a, hidden in enumerate(hidden_sizes):
        for b, t in enumerate(tokens):
            e = embed[a, b] = raw[("model", hidden, t, "embed")]
            for dt in dtypes:
                kdt = "float32" if dt == "int8" else dt
                ffn = lin(dt, t, hidden, f) + lin(dt, t, f, hidden) + raw[("activation", kdt, t, f)]
                heads = 3 * lin(dt, t, hidden, d) + lin(dt, t, d, hidden) + raw[("attention", kdt, d, 1, t)]
                full = (raw[("model", hidden, t, "attn", dt)] - e) / n_layers - ffn - heads
                if dt == "int8":
                    attn[dt][a, b] = attn["float32"][a, b]
                    layer[dt][a, b] = max(0.0, full - attn[dt][a, b])
                else:
                    bare = (raw[("model", hidden, t, "noattn", dt)] - e) / n_layers - ffn - lin(kdt, t, 0, hidden)
                    layer[dt][a, b] = max(0.0, bare)
                    attn[dt][a, b] = max(0.0, full - layer[dt][a, b])
    return {
        "hidden": list(hidden_sizes), "tokens": list(tokens), "embed_ms": _monotone(embed).tolist(),
        "layer_ms": {dt: _monotone(v).tolist() for dt, v in layer.items()},
        "attn_ms": {dt: _monotone(v).tolist() for dt, v in attn.items()},
    }
