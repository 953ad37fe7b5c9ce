"""Predicted latency, size and memory of a Plan on a profiled device, from the plan and the
model's config alone (no model is built, no weights are read).

Latency = embeddings/pooler + for every kept layer (dropped layers cost nothing):
    kernel_scale * (q/k/v/o linears at the kept heads + attention core + FFN linears at the
    kept neurons, two per linear under low rank, three linears for gated MLPs + activation)
    + layer_ms + attn_ms (attention block glue; a 0-head layer skips it and the core).
Kernel times come from the profile's grids by piecewise-linear interpolation in every
dimension (tokens, in, out; heads, seq); beyond the grid's last point they scale
proportionally. kernel_scale, layer_ms and attn_ms were fitted on real (random) BERT layers
when profiling (see `searcher.cost.microbench`). Each layer is looked up in the table of its number
format (`devices.runtime.format_of` of its bits and the plan's int8_scheme): bits 8 the int8 tables
(dynamic: its activation quantization is inside the int8 kernel) or, with int8_scheme static, the
int8_static ones; 16 the bfloat16 ones (cast hooks are in its layer_ms), 32 and the simulated 4/3/2 the
float32 ones (`simulated` says so). int8 layers run attention and the activation in the float precision:
float32, or bfloat16 in a runtime that sets its precision model-wide (OpenVINO) for a plan with bits-16
layers. A static int8 layer in a profile without int8_static tables is looked up as dynamic int8 (as
before version 2); any other format the profile has no table for is a ProfileError. `CompiledProfile.covers`
says whether every format of a plan has its own table (the screen skips a plan on nothing less).
Sizes are counted as `methods.size.model_size` counts a built model.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
from slimformer.methods.plan import SIMULATED_BITS, ModelShape, Plan

from ..devices.registry import get_runtime
from ..devices.runtime import SIMULATED, format_of
from ..errors import UserError
from .profile import ProfileError, validate_profile

__all__ = ["predict", "model_facts", "ModelFacts", "compile_profile", "CompiledProfile", "table_format"]


def table_format(bits: int, scheme: str = "dynamic") -> str:
    """The profile table a layer of `bits` (int8: in `scheme`) is looked up in (simulated bits: float32)."""
    fmt = format_of(bits, scheme)
    return "float32" if fmt == SIMULATED else fmt


# ----- interpolation ---------------------------------------------------------------------
def _locate(xs: list[float], x: float) -> tuple[int, float, float]:
    """(index, fraction towards index+1, proportional scale beyond the last point)."""
    if len(xs) == 1 or x <= xs[0]:
        scale = x / xs[0] if len(xs) == 1 and x > xs[0] > 0 else 1.0
        return 0, 0.0, scale
    if x >= xs[-1]:
        return len(xs) - 2, 1.0, x / xs[-1]
    i = bisect_right(xs, x) - 1
    return i, (x - xs[i]) / (xs[i + 1] - xs[i]), 1.0


def _interp1(xs, ys, x: float) -> float:
    i, f, s = _locate(xs, x)
    if len(xs) == 1:
        return ys[0] * s
    return (ys[i] * (1 - f) + ys[i + 1] * f) * s


def _interp2(xs, ys, grid, x: float, y: float, scale: bool = True) -> float:
    """Bilinear; beyond the last point proportional (`scale`) or clamped."""
    i, fx, sx = _locate(xs, x)
    j, fy, sy = _locate(ys, y)
    if not scale:
        sx = sy = 1.0
    i1, j1 = min(i + 1, len(xs) - 1), min(j + 1, len(ys) - 1)
    top = grid[i][j] * (1 - fy) + grid[i][j1] * fy
    bottom = grid[i1][j] * (1 - fy) + grid[i1][j1] * fy
    return (top * (1 - fx) + bottom * fx) * sx * sy


def _slice_tokens(table: dict, tokens: int, key: str = "ms") -> list:
    """A token-axis (axis 0) table interpolated at `tokens`: below the grid clamped, above scaled."""
    arr = np.asarray(table[key], dtype=float)
    ts = table["tokens"]
    i, f, s = _locate(ts, tokens)
    i1 = min(i + 1, len(ts) - 1)
    return ((arr[i] * (1 - f) + arr[i1] * f) * s).tolist()


def _bytes(dtype: str, tokens, k, n):
    """Bytes a Linear moves: weights at their width, activations in and out."""
    w, a = {"float32": (4, 4), "bfloat16": (2, 2), "int8": (1, 4), "int8_static": (1, 1)}[dtype]
    return w * k * n + a * tokens * (k + n)


def _fit_linear(dtype: str, table: dict) -> tuple[float, float, float]:
    """time = a + b*flops + c*bytes over the grid, non-negative least squares in relative error."""
    from scipy.optimize import nnls

    ms = np.asarray(table["ms"], dtype=float).ravel()
    t, k, n = (x.ravel() for x in np.meshgrid(table["tokens"], table["in"], table["out"], indexing="ij"))
    x = np.stack([np.ones_like(ms), 2 * t * k * n, _bytes(dtype, t, k, n)], axis=1)
    w = 1 / np.maximum(ms, 1e-3)
    coef, _ = nnls(x * w[:, None], ms * w)
    return float(coef[0]), float(coef[1]), float(coef[2])


class CompiledProfile:
    """A profile's tables prepared for fast lookups; per-shape results are memoised."""

    def __init__(self, profile: dict, linear_model: str = "grid"):
        if linear_model not in ("grid", "fit"):
            raise ValueError(f"linear_model must be 'grid' or 'fit', got {linear_model!r}")
        validate_profile(profile)
        self.profile, self.linear_model = profile, linear_model
        self.dtypes = tuple(profile["linear"])
        runtime = profile["fingerprint"].get("runtime", "eager")
        try:
            self.model_wide = get_runtime(runtime).model_wide_precision
        except UserError:  # a runtime this install does not know
            self.model_wide = False
        self._slices: dict = {}
        self._memo: dict = {}
        self._fits = {dt: _fit_linear(dt, t) for dt, t in profile["linear"].items()} if linear_model == "fit" else {}

    def covers(self, bits, scheme: str = "dynamic") -> bool:
        """Whether the profile has a table for every format of layers with these bit-widths."""
        return all(table_format(b, scheme) in self.dtypes for b in set(bits))

    def _sliced(self, section: str, dtype: str, tokens: int):
        key = (section, dtype, tokens)
        if key not in self._slices:
            table = self.profile[section][dtype]
            self._slices[key] = _slice_tokens(table, tokens)
        return self._slices[key]

    def linear(self, dtype: str, tokens: int, k: int, n: int) -> float:
        key = ("lin", dtype, tokens, k, n)
        hit = self._memo.get(key)
        if hit is None:
            if dtype not in self.profile["linear"]:
                fp = self.profile["fingerprint"]
                raise ProfileError(f"the device profile has no {dtype} kernels (runtime {fp.get('runtime', '?')}, "
                                   f"device {fp.get('device', '?')}); choose other bits")
            t = self.profile["linear"][dtype]
            if self.linear_model == "fit":
                a, b, c = self._fits[dtype]
                hit = self._memo[key] = a + b * 2 * tokens * k * n + c * _bytes(dtype, tokens, k, n)
            else:
                hit = self._memo[key] = _interp2(t["in"], t["out"], self._sliced("linear", dtype, tokens), k, n)
        return hit

    def activation(self, dtype: str, tokens: int, width: int) -> float:
        key = ("act", dtype, tokens, width)
        hit = self._memo.get(key)
        if hit is None:
            dt = dtype if dtype in self.profile["activation"] else "float32"
            t = self.profile["activation"][dt]
            hit = self._memo[key] = _interp1(t["width"], self._sliced("activation", dt, tokens), width)
        return hit

    def attention(self, dtype: str, heads: int, seq: int, head_dim: int) -> float:
        key = ("attn", dtype, heads, seq, head_dim)
        hit = self._memo.get(key)
        if hit is None:
            by_dim = self.profile["attention"].get(dtype) or self.profile["attention"]["float32"]
            dims = sorted(int(d) for d in by_dim)
            near = min(dims, key=lambda d: (abs(d - head_dim), -d))
            t = by_dim[str(near)]
            hit = self._memo[key] = _interp2(t["heads"], t["seq"], t["ms"], heads, seq) * head_dim / near
        return hit

    def overhead(self, part: str, dtype: str, hidden: int, tokens: int, arch: str = "bert") -> float:
        key = ("ovh", part, dtype, hidden, tokens, arch)
        hit = self._memo.get(key)
        if hit is None:
            ov = self.profile["overhead"].get(arch) or next(iter(self.profile["overhead"].values()))
            grid = ov["embed_ms"] if part == "embed" else ov[part].get(dtype, ov[part]["float32"])
            hit = self._memo[key] = _interp2(ov["hidden"], ov["tokens"], grid, hidden, tokens,
                                             scale=part != "kernel_scale")
        return hit


_COMPILED: dict[int, CompiledProfile] = {}


def compile_profile(profile: dict | CompiledProfile) -> CompiledProfile:
    """The prepared form of a profile (cached by identity: load a profile once, reuse it)."""
    if isinstance(profile, CompiledProfile):
        return profile
    hit = _COMPILED.get(id(profile))
    if hit is None or hit.profile is not profile:
        if len(_COMPILED) > 16:
            _COMPILED.clear()
        hit = _COMPILED[id(profile)] = CompiledProfile(profile)
    return hit


# ----- the model, from its config ------------------------------------------------------------
@dataclass(frozen=True)
class ModelFacts:
    """What the cost model needs to know about an architecture: its adapter's facts, read off its config."""

    model_type: str
    shape: ModelShape
    head_dim: int
    ffn_inputs: int  # 2 for gated MLPs
    qkv_bias: bool
    o_bias: bool
    ffn_bias: bool
    o_inside_core: bool  # True: a 0-head layer skips the output projection too
    norm_params: int  # per layer
    embed_params: int  # embeddings + final norm (+ pooler when asked)
    vocab_size: int


_FACTS: dict = {}


def _cfg(config):
    if isinstance(config, dict):
        if "model_type" not in config:
            raise ValueError("config mapping has no 'model_type'; pass a transformers config or its to_dict()")
        return SimpleNamespace(**config)
    return config


def model_facts(config, pooler: bool = True) -> ModelFacts:
    """Architecture facts from a transformers config (or its dict), via methods' adapters."""
    key = (id(config), pooler)
    hit = _FACTS.get(key)
    if hit is not None and hit[0] is config:
        return hit[1]
    from slimformer.methods.adapters import get_adapter

    cfg = _cfg(config)
    adapter = get_adapter(SimpleNamespace(config=cfg))
    try:
        shape, head_dim = adapter.shape(), adapter.head_dim
        biases, norms, embed = adapter.linear_biases(), adapter.norm_params(), adapter.embedding_params()
    except (AttributeError, TypeError) as exc:
        raise ValueError(f"config of type {cfg.model_type!r} lacks a field the cost model needs: {exc}") from None
    h = shape.hidden_size
    embed += (h * h + h) if pooler and adapter.has_pooler else 0
    facts = ModelFacts(cfg.model_type, shape, head_dim, len(adapter.ffn_in), *biases, adapter.o_inside_core, norms,
                       embed, getattr(cfg, "vocab_size", 0) or 0)
    if len(_FACTS) > 64:
        _FACTS.clear()
    _FACTS[key] = (config, facts)
    return facts


# ----- per-layer accounting ------------------------------------------------------------------
def _linears(f: ModelFacts, heads: int, ffn: int, rank: int) -> tuple[list, list]:
    """(attention linears, FFN linears) of one layer as (in, out, has_bias) triples."""
    h, d = f.shape.hidden_size, f.head_dim
    attn: list = []
    if heads:
        kv = heads // f.shape.heads_per_group
        attn = [(h, heads * d, f.qkv_bias), (h, kv * d, f.qkv_bias), (h, kv * d, f.qkv_bias),
                (heads * d, h, f.o_bias)]
    elif not f.o_inside_core:
        attn = [(0, h, True)]  # the output projection still runs (on nothing) and adds its bias
    dense = [(h, ffn, f.ffn_bias)] * f.ffn_inputs + [(ffn, h, f.ffn_bias)]
    if not rank or not ffn:
        return attn, dense
    out = []
    for k, n, b in dense:
        r = min(rank, k, n)
        out += [(k, r, False), (r, n, b)]
    return attn, out


def _param_bytes(linears, bits: int, group: int) -> tuple[int, float]:
    """(params, bytes) of these linears stored at `bits`, exactly as methods.size counts them."""
    params, size = 0, 0.0
    for k, n, b in linears:
        w, bias = k * n, n if b else 0
        params += w + bias
        if bits == 32:
            size += 4 * (w + bias)
        elif bits == 16:
            size += 2 * (w + bias)
        elif bits == 8:  # int8 weight + a float32 scale per output; empty projections stay float32
            size += (w + 4 * n + 4 * bias) if w else 4 * bias
        else:
            size += w * bits / 8 + w / group * 2 + 4 * bias
    return params, size


def _layer(cp: CompiledProfile, f: ModelFacts, heads: int, ffn: int, rank: int, bits: int, batch: int, seq: int,
           group: int, scheme: str = "dynamic", float_dt: str = "float32") -> tuple:
    """(ms, flops, params, bytes, runtime weight bytes, live activation bytes) of one kept layer; an int8
    layer runs attention and the activation in `float_dt`."""
    key = ("layer", f, heads, ffn, rank, bits, batch, seq, group, scheme, float_dt)
    hit = cp._memo.get(key)
    if hit is not None:
        return hit
    dt = table_format(bits, scheme)
    if dt == "int8_static" and dt not in cp.dtypes:  # no table of its own: as dynamic int8 (covers is False)
        dt = "int8"
    tok, hdim = batch * seq, f.shape.hidden_size
    attn, dense = _linears(f, heads, ffn, rank)
    kdt = float_dt if dt in ("int8", "int8_static") else dt
    ms = sum(cp.linear(dt, tok, k, n) for k, n, _ in attn + dense)
    if heads:
        ms += cp.attention(kdt, batch * heads, seq, f.head_dim)
    if ffn:
        ms += cp.activation(kdt, tok, ffn) * f.ffn_inputs
    ms *= cp.overhead("kernel_scale", dt, hdim, tok)
    ms += cp.overhead("layer_ms", dt, hdim, tok) + (cp.overhead("attn_ms", dt, hdim, tok) if heads else 0.0)
    flops = sum(2 * tok * k * n for k, n, _ in attn + dense) + 4 * batch * heads * seq * seq * f.head_dim
    params, size = _param_bytes(attn + dense, bits, group)
    extra = f.norm_params + (hdim if heads == 0 and f.o_inside_core and f.o_bias else 0)  # NoAttention's bias
    params += extra
    size += extra * (2 if bits == 16 else 4)
    wbytes = sum(k * n for k, n, _ in attn + dense) * {32: 4, 16: 2, 8: 1}.get(bits, 4)
    act = tok * (4 * hdim + max([n for _, n, _ in attn + dense] + [0]) * 2) * (2 if bits == 16 else 4)
    act += batch * heads * seq * seq * 4
    hit = cp._memo[key] = (ms, flops, params, size, wbytes, act)
    return hit


def predict(plan: Plan, config, profile: dict | CompiledProfile, seq_len: int = 128, batch_size: int = 1, *,
            pooler: bool = True) -> dict:
    """Predicted cost of `plan` on the profiled device, from the config alone.

    Returns latency_ms, size_mb, size_bytes, params, peak_memory_mb (weights at their run-time
    width + the largest layer's live activations: an estimate), flops, floor_ms (FLOPs at the
    profile's best measured throughput) and simulated (4/3/2-bit layers: timed as float32,
    sized at their simulated width). `pooler`: the BERT/ViT pooler is part of the model
    (as in AutoModel). Sizes follow `methods.size.model_size`.
    """
    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"seq_len and batch_size must be >= 1, got {seq_len} and {batch_size}")
    cp = compile_profile(profile)
    f = model_facts(config, pooler)
    p = plan.resolve(f.shape)
    hdim, tok = f.shape.hidden_size, batch_size * seq_len
    ms = cp.overhead("embed", "float32", hdim, tok)
    flops = 2 * batch_size * hdim * hdim if pooler else 0
    params, size = f.embed_params, 4.0 * f.embed_params
    wbytes, act = 4.0 * f.embed_params, 0.0
    # a runtime that sets its float precision model-wide runs a bits-16 plan's int8 layers' attention in bf16
    float_dt = "bfloat16" if cp.model_wide and any(p.bits[i] == 16 for i in p.layers) else "float32"
    for i in p.layers:
        lms, lfl, lpa, lsz, lwb, lac = _layer(cp, f, p.heads[i], p.ffn[i], p.rank[i], p.bits[i], batch_size,
                                                seq_len, p.group_size, p.int8_scheme, float_dt)
        ms, flops, params, size, wbytes, act = ms + lms, flops + lfl, params + lpa, size + lsz, wbytes + lwb, max(act, lac)
    floor = _floor_ms(cp, flops)
    return {
        "latency_ms": max(ms, floor),
        "size_mb": size / 2**20,
        "size_bytes": int(size),
        "params": int(params),
        "peak_memory_mb": (wbytes + act) / 2**20,
        "flops": int(flops),
        "floor_ms": floor,
        "simulated": any(p.bits[i] in SIMULATED_BITS for i in p.layers),
    }


def _floor_ms(cp: CompiledProfile, flops: float) -> float:
    """FLOPs at the best throughput any profiled Linear reached (a lower bound on latency)."""
    best = cp._memo.get("best_rate")
    if best is None:
        best = 0.0
        for t in cp.profile["linear"].values():
            arr = np.asarray(t["ms"], dtype=float)
            toks, ks, ns = (np.asarray(t[a], dtype=float) for a in ("tokens", "in", "out"))
            fl = 2 * toks[:, None, None] * ks[None, :, None] * ns[None, None, :]
            with np.errstate(divide="ignore", invalid="ignore"):
                rate = np.where(arr > 0, fl / arr, 0.0)
            best = max(best, float(rate.max()))
        cp._memo["best_rate"] = best
    return flops / best if best > 0 else 0.0
