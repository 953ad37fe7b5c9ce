"""The microbenchmarks behind a device profile (see `searcher.cost.profile`).

Every measurement is a "job" (a factory returning named no-argument callables). All jobs run
in `passes` shuffled passes; a cell's figure is the best (minimum) of its repetitions over
all passes: the kernel's cost when nothing else competes for the cores, which is what a
machine shared with other work gets closest to (load only ever slows a timing). Shuffling
spreads a burst of load over random cells rather than whole rows; linear cells far above a
robust fit of their grid are clipped to it; tables are made monotone along every axis.

Reference models (random BERTs built by `apply_plan`, from no layers to full width) are
timed in interleaved rounds so the ones compared with each other see the same load; the
layer cost beyond the kernels is fitted from them (`overhead_table`).
"""

from __future__ import annotations

import random
import time
import warnings
from collections.abc import Callable

import numpy as np

from .reference import INT8_DTYPES, OVERHEAD_LAYERS, layer_configs, reference_plans

__all__ = [
    "run_benchmarks", "grid", "linear_tables", "activation_tables", "attention_tables", "overhead_table",
]


Job = Callable[[], list[tuple[tuple, Callable[[], object]]]]


def grid(hidden_sizes: tuple[int, ...], head_dims, quick: bool) -> tuple[list[int], list[int]]:
    """(feature widths, head counts) measured: 0, 32, 64 and fractions/multiples of every
    hidden size, plus every shape of the reference layers (`layer_configs`)."""
    fracs = (0.25, 0.5, 1, 2, 4) if quick else (1 / 6, 1 / 3, 0.5, 2 / 3, 1, 1.5, 2, 3, 4)
    widths = {0, 32, 64} | {max(8, int(round(h * f / 8)) * 8) for h in hidden_sizes for f in fracs}
    heads = {1, 4, 12} if quick else {1, 2, 4, 8, 12, 16}
    for h in hidden_sizes:
        d, configs = layer_configs(h, head_dims)
        widths |= {h} | {n * d for n, _ in configs.values()} | {f for _, f in configs.values()}
        heads |= {n for n, _ in configs.values() if n}
    return sorted(widths), sorted(heads)


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
            else:  # int8 layers keep zero-width projections in float32 (methods.quantize skips them)
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


def _overhead_job(hidden: int, head_dims, dtypes, tokens, device) -> Job:
    """The reference models (`reference_plans`) built by `apply_plan` exactly as the product
    builds them."""

    def make():
        import torch
        from slimformer.methods import apply_plan

        base, plans = reference_plans(hidden, head_dims, dtypes, tokens)
        models = {what: apply_plan(base, plan) for what, plan in plans.items()}
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
    *, dtypes, tokens, widths, heads_grid, head_dims, hidden_sizes, device, passes, quick, step, runtime="eager",
    threads: int = 1,
) -> dict:
    """All raw timings {key: ms}; `step(description, total)` drives a progress display. A `runtime`
    that reads ONNX (onnxruntime, openvino) runs the same grid as kernel graphs (`searcher.cost.onnxbench`)."""
    import torch

    if runtime != "eager":
        from . import onnxbench

        rt = runtime
        linear_job = lambda dt, k, n, tokens, device: onnxbench.linear_job(rt, dt, k, n, tokens, threads)  # noqa: E731
        activation_job = lambda dt, tokens, widths, device: onnxbench.activation_job(rt, dt, tokens, widths, threads)  # noqa: E731
        attention_job = lambda dt, d, h, seqs, device: onnxbench.attention_job(rt, dt, d, h, seqs, threads)  # noqa: E731
        overhead_job = lambda h, hd, dts, tokens, device: onnxbench.overhead_job(rt, h, hd, dts, tokens, threads)  # noqa: E731
    else:
        linear_job, activation_job, attention_job, overhead_job = \
            _linear_job, _activation_job, _attention_job, _overhead_job

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    budget, max_reps = (0.01, 5) if quick else (0.015, 9)
    jobs: list[tuple[int, Job]] = []
    cap = max(hidden_sizes)  # every projection has one side <= the hidden size (rank <= it too)
    for dt in dtypes:
        jobs += [(len(tokens), linear_job(dt, k, n, tokens, device)) for k in widths for n in widths
                 if min(k, n) <= cap]
    for dt in float_dtypes(dtypes):
        jobs.append((len(tokens) * len(widths), activation_job(dt, tokens, widths, device)))
        jobs += [(len(tokens), attention_job(dt, d, h, tokens, device)) for d in head_dims for h in heads_grid]
    n_models = 1 + 4 * len(dtypes) - sum(d in INT8_DTYPES for d in dtypes)
    jobs += [(len(tokens) * n_models, overhead_job(h, head_dims, dtypes, tokens, device)) for h in hidden_sizes]
    total = passes * sum(n for n, _ in jobs)
    best: dict[tuple, float] = {}

    def keep(key, ms):
        best[key] = min(ms, best.get(key, float("inf")))

    with torch.inference_mode():
        for p in range(passes):
            order = list(jobs)
            random.Random(p).shuffle(order)
            for _, make in order:
                items = make()
                if items and items[0][0][0] == "model":
                    for key, ms in _time_interleaved(items, sync, rounds=2 if quick else 4):
                        keep(key, ms)
                        step(f"pass {p + 1}/{passes} reference models", total)
                    continue
                for key, fn in items:
                    keep(key, _time_ms(fn, sync, budget, 3, max_reps))
                    step(f"pass {p + 1}/{passes} {key[0]}", total)
    return best


def _time_interleaved(items, sync, rounds: int) -> list[tuple[tuple, float]]:
    """Best of `rounds` rounds, each timing every model once, per token count: the reference
    models that are compared with each other see the same load."""
    by_tokens: dict = {}
    for key, fn in items:
        by_tokens.setdefault(key[2], []).append((key, fn))
    out = []
    for group in by_tokens.values():
        times = {key: [] for key, _ in group}
        for r in range(rounds + 1):
            for key, fn in group if r % 2 else group[::-1]:
                t0 = time.perf_counter()
                fn()
                sync()
                if r:  # round 0 warms up
                    times[key].append((time.perf_counter() - t0) * 1e3)
        out += [(key, min(ts)) for key, ts in times.items()]
    return out


def _bilinear_fit(ks, ns, ms) -> np.ndarray:
    """Robust fit of time = a + b*k + c*n + d*k*n (GEMM: call overhead, reading the input,
    writing the output, multiply-adds) in relative error; NaN cells are ignored."""
    from scipy.optimize import least_squares

    k, n = np.meshgrid(ks, ns, indexing="ij")
    x = np.stack([np.ones_like(k), k, n, k * n], axis=-1).reshape(-1, 4).astype(float)
    y = np.asarray(ms, dtype=float).reshape(-1)
    ok = np.isfinite(y) & (y > 0)
    x, y, scale = x[ok], y[ok], x[ok].max(axis=0)
    res = least_squares(lambda c: (x / scale) @ c / y - 1, np.full(4, y.mean() / 4), bounds=(0, np.inf),
                        loss="soft_l1", f_scale=0.05)
    return (np.stack([np.ones_like(k), k, n, k * n], axis=-1) / scale) @ res.x


def linear_tables(raw: dict, dtypes, tokens, widths, hidden_sizes, tolerance: float = 0.1) -> dict:
    """Linear grids, de-noised: per dtype and token count, a cell more than `tolerance` above
    a robust bilinear fit of its grid (load from other processes only ever slows a timing)
    is clipped to it; cells wider than the hidden size on both sides (not timed) take the fit."""
    cap = max(hidden_sizes)
    out = {}
    for dt in dtypes:
        ms = np.full((len(tokens), len(widths), len(widths)), np.nan)
        for t, tok in enumerate(tokens):
            for a, k in enumerate(widths):
                for b, n in enumerate(widths):
                    if min(k, n) <= cap:
                        ms[t, a, b] = raw[("linear", dt, tok, k, n)]
            fit = _bilinear_fit(widths, widths, ms[t]) * (1 + tolerance)
            ms[t] = np.where(np.isfinite(ms[t]), np.minimum(ms[t], fit), fit)
        out[dt] = {"tokens": list(tokens), "in": list(widths), "out": list(widths), "ms": _monotone(ms).tolist()}
    return out


def float_dtypes(dtypes) -> tuple[str, ...]:
    """The dtypes activations and attention are profiled in (int8 layers run them in float32)."""
    return tuple(d for d in ("float32", "bfloat16") if d in dtypes)


def activation_tables(raw: dict, tokens, widths, dtypes=("float32", "bfloat16")) -> dict:
    return {dt: {"tokens": list(tokens), "width": list(widths),
                 "ms": _monotone([[raw[("activation", dt, t, w)] for w in widths] for t in tokens]).tolist()}
            for dt in float_dtypes(dtypes)}


def attention_tables(raw: dict, head_dims, heads_grid, seqs, dtypes=("float32", "bfloat16")) -> dict:
    return {dt: {str(d): {"heads": list(heads_grid), "seq": list(seqs),
                          "ms": _monotone([[raw[("attention", dt, d, h, s)] for s in seqs] for h in heads_grid]).tolist()}
                 for d in head_dims}
            for dt in float_dtypes(dtypes)}


def _kernels(tables: dict, dt: str, t: int, hidden: int, d: int, heads: int, ffn: int) -> float:
    """The profiled kernels of one BERT layer (as `costmodel` adds them up), at grid points."""
    kdt = "float32" if dt in INT8_DTYPES else dt

    def at(table, axes, point):
        value = table["ms"]
        for axis, p in zip(axes, point):
            value = value[table[axis].index(p)]
        return value

    lin = lambda k, n: at(tables["linear"][dt], ("tokens", "in", "out"), (t, k, n))  # noqa: E731
    ms = lin(hidden, ffn) + lin(ffn, hidden)
    ms += at(tables["activation"][kdt], ("tokens", "width"), (t, ffn)) if ffn else 0.0
    if heads:
        attn = at(tables["attention"][kdt][str(d)], ("heads", "seq"), (heads, t))
        return ms + 3 * lin(hidden, heads * d) + lin(heads * d, hidden) + attn
    return ms + lin(0, hidden)


def overhead_table(raw: dict, tables: dict, dtypes, hidden_sizes, tokens, head_dims) -> dict:
    """What a real layer costs beyond the profiled kernels, fitted per hidden size, tokens, dtype.

    Per reference model: (time - embeddings) / layers = layer_ms + attn_ms * [heads > 0]
    + kernel_scale * (its kernels), solved by bounded least squares in relative error
    (layer_ms, attn_ms >= 0; kernel_scale in [0.5, 2] absorbs what isolated kernels miss,
    e.g. weights no longer in cache). int8 layers (dynamic and static) run attention in float32: their
    attn_ms is float32's (which keeps the int8 fits to two unknowns).
    """
    from scipy.optimize import lsq_linear

    shape = (len(hidden_sizes), len(tokens))
    embed = np.zeros(shape)
    fitted = {part: {dt: np.zeros(shape) for dt in dtypes} for part in ("layer_ms", "attn_ms", "kernel_scale")}
    for a, hidden in enumerate(hidden_sizes):
        d, configs = layer_configs(hidden, head_dims)
        for b, t in enumerate(tokens):
            e = embed[a, b] = raw[("model", hidden, t, "embed")]
            for dt in sorted(dtypes, key=lambda x: x in INT8_DTYPES):  # float32 before int8
                rows, ys = [], []
                for name, (heads, ffn) in configs.items():
                    key = ("model", hidden, t, name, dt)
                    if key in raw:
                        rows.append([1.0, float(heads > 0), _kernels(tables, dt, t, hidden, d, heads, ffn)])
                        ys.append(max((raw[key] - e) / OVERHEAD_LAYERS, 1e-6))
                x, y = np.array(rows), np.array(ys)
                hi = [np.inf, np.inf, 2.0]
                if dt in INT8_DTYPES:  # fix attn_ms to float32's: a bound of width ~0
                    fixed = fitted["attn_ms"]["float32"][a, b] if "float32" in dtypes else 0.0
                    hi[1] = fixed + 1e-9
                    lo = [0.0, fixed, 0.5]
                else:
                    lo = [0.0, 0.0, 0.5]
                sol = lsq_linear(x / y[:, None], np.ones_like(y), bounds=(lo, hi)).x
                for part, value in zip(("layer_ms", "attn_ms", "kernel_scale"), sol):
                    fitted[part][dt][a, b] = value
    return {
        "hidden": list(hidden_sizes), "tokens": list(tokens), "embed_ms": _monotone(embed).tolist(),
        "layer_ms": {dt: _monotone(v).tolist() for dt, v in fitted["layer_ms"].items()},
        "attn_ms": {dt: _monotone(v).tolist() for dt, v in fitted["attn_ms"].items()},
        "kernel_scale": {dt: v.tolist() for dt, v in fitted["kernel_scale"].items()},
    }
