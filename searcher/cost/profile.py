"""Device profiles: microbenchmarks of the kernels a compressed Transformer runs.

A profile is versioned JSON. Its tables hold milliseconds (best of repeated timings, see
`searcher.cost.microbench`) on a grid, per dtype: one table per number format the runtime runs
here and profiles (`devices.runtime.FORMATS`, `Runtime.profile_formats`; `settings.formats` lists them):
`float32`, `bfloat16` (eager: bf16 layers; OpenVINO: the bf16 precision hint, model-wide), `int8`
(dynamic: PyTorch / ONNX Runtime int8 Linear, OpenVINO int8 weights) and `int8_static` (ONNX Runtime
QDQ, OpenVINO nncf.quantize: weights and activations, calibrated):

- `linear[dtype]`: nn.Linear forward, grid tokens x in_features x out_features;
- `activation[dtype]`: the FFN activation (GELU) on [tokens, width];
- `attention[dtype][head_dim]`: SDPA core (view/transpose glue included), heads x seq_len;
- `overhead["bert"]`: what a real layer costs beyond those kernels (LayerNorms, residual adds,
  module dispatch, dtype casts), fitted from tiny random BERT models built with `apply_plan`,
  plus the embeddings + pooler; per hidden size x tokens.

Tables are made monotone non-decreasing along every axis (noise must not make a smaller
model look slower). `searcher.cost.costmodel` interpolates them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np

from ..devices.registry import get_runtime, profiled_runtimes
from ..devices.runtime import FORMATS

__all__ = [
    "ProfileError", "PROFILE_VERSION", "RUNTIMES", "DTYPES", "profile_device", "save_profile", "load_profile",
    "validate_profile", "default_profile_path", "find_profile", "fingerprint", "fingerprint_hash",
]

# 2: a table per number format (int8_static; OpenVINO bfloat16); a version-1 profile lacks the tables the
# cost model now reads for them
PROFILE_VERSION = 2
PROFILE_KIND = "slimformer-device-profile"
RUNTIMES = profiled_runtimes()  # the runtimes with a microbenchmark grid (devices/registry.py)
DTYPES = FORMATS


class ProfileError(ValueError):
    """A device profile is missing, corrupt, from another version/tool, or cannot be made."""


# ----- identity and storage --------------------------------------------------------------
def _check_runtime(runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise ProfileError(f"unknown runtime {runtime!r}; allowed: {', '.join(RUNTIMES)}")


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def fingerprint(threads: int, runtime: str = "eager", device: str | None = None) -> dict:
    """What a profile is valid for: device facts (CPU model, ISA flags, versions), threads, runtime."""
    from ..devices.latency import device_facts

    _check_runtime(runtime)
    facts = device_facts(threads, runtime)
    facts["device"] = device or ("cpu" if get_runtime(runtime).kernel is not None else _default_device())
    return facts


def fingerprint_hash(fp: dict) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def _cache_dir() -> Path:
    root = os.environ.get("SLIMFORMER_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "slimformer") / "profiles"


def default_profile_path(threads: int, runtime: str = "eager", device: str | None = None) -> Path:
    """`$SLIMFORMER_CACHE/profiles/<fingerprint-hash>.json` (default cache: ~/.cache/slimformer)."""
    return _cache_dir() / f"{fingerprint_hash(fingerprint(threads, runtime, device))}.json"


def save_profile(profile: dict, path: str | Path) -> Path:
    validate_profile(profile)
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(profile, indent=1, sort_keys=True))
    tmp.replace(path)
    return path


def load_profile(path: str | Path) -> dict:
    """Read and validate a profile; ProfileError names what is wrong with the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ProfileError(f"device profile not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProfileError(f"{path} is not a readable JSON device profile ({exc}); re-run `slimformer profile`") from None
    try:
        validate_profile(data)
    except ProfileError as exc:
        raise ProfileError(f"{path}: {exc}") from None
    return data


def find_profile(threads: int, runtime: str = "eager", path: str | Path | None = None,
                 device: str | None = None) -> dict | None:
    """The profile for this device/threads/runtime, or None when there is none cached yet.

    With `path` the file must load (ProfileError otherwise); a fingerprint that differs from
    this machine's only warns. Without it, the cache entry for this fingerprint is used;
    an unreadable cache entry warns and counts as missing.
    """
    fp = fingerprint(threads, runtime, device)
    if path is not None:
        profile = load_profile(path)
        diff = sorted(k for k in set(fp) | set(profile["fingerprint"]) if fp.get(k) != profile["fingerprint"].get(k))
        if diff:
            warnings.warn(f"device profile {path} was made for another setup (differs in: {', '.join(diff)}); "
                          "predictions may be off", stacklevel=2)
        return profile
    cached = _cache_dir() / f"{fingerprint_hash(fp)}.json"
    if not cached.is_file():
        return None
    try:
        return load_profile(cached)
    except ProfileError as exc:
        warnings.warn(f"ignoring cached device profile: {exc}", stacklevel=2)
        return None


# ----- schema ----------------------------------------------------------------------------
def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ProfileError(msg)


def _check_axis(name: str, axis) -> int:
    _need(isinstance(axis, list) and len(axis) > 0, f"{name} must be a non-empty list")
    _need(all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in axis), f"{name} must hold numbers")
    _need(all(a < b for a, b in zip(axis, axis[1:])), f"{name} must be strictly increasing")
    return len(axis)


def _check_table(name: str, table, axes: tuple[str, ...], key: str = "ms") -> None:
    _need(isinstance(table, dict), f"{name} must be a mapping")
    dims = [_check_axis(f"{name}.{a}", table.get(a)) for a in axes]
    try:
        arr = np.asarray(table.get(key), dtype=float)
    except (TypeError, ValueError):
        raise ProfileError(f"{name}.{key} must be a numeric array") from None
    _need(list(arr.shape) == dims, f"{name}.{key} has shape {list(arr.shape)}, expected {dims}")
    _need(bool(np.all(np.isfinite(arr))) and bool(np.all(arr >= 0)), f"{name}.{key} must be finite and >= 0")


def validate_profile(data) -> None:
    """Raise ProfileError unless `data` is a device profile of this version."""
    _need(isinstance(data, dict), f"not a slimformer device profile (top level is {type(data).__name__})")
    _need(data.get("kind") == PROFILE_KIND and "version" in data,
          "not a slimformer device profile (no kind/version); re-run `slimformer profile`")
    _need(data["version"] == PROFILE_VERSION,
          f"device profile version {data['version']!r} is not supported (expected {PROFILE_VERSION}, with a "
          "table per number format); re-run `slimformer profile`")
    _need(isinstance(data.get("fingerprint"), dict), "fingerprint must be a mapping")
    for key in ("linear", "activation", "attention", "overhead"):
        _need(isinstance(data.get(key), dict), f"missing section {key!r}")
    _need("float32" in data["linear"], "linear has no float32 table")
    for dt, table in data["linear"].items():
        _need(dt in DTYPES, f"linear: unknown dtype {dt!r}")
        _check_table(f"linear.{dt}", table, ("tokens", "in", "out"))
    for dt, table in data["activation"].items():
        _need(dt in DTYPES, f"activation: unknown dtype {dt!r}")
        _check_table(f"activation.{dt}", table, ("tokens", "width"))
    for dt, by_dim in data["attention"].items():
        _need(isinstance(by_dim, dict) and by_dim, f"attention.{dt} must map head_dim to a table")
        for d, table in by_dim.items():
            _need(str(d).isdigit(), f"attention.{dt}: head_dim key {d!r} is not an integer")
            _check_table(f"attention.{dt}.{d}", table, ("heads", "seq"))
    for arch, ov in data["overhead"].items():
        _check_table(f"overhead.{arch}", ov, ("hidden", "tokens"), key="embed_ms")
        for part in ("layer_ms", "attn_ms", "kernel_scale"):
            _need(isinstance(ov.get(part), dict), f"overhead.{arch}.{part} must map dtype to a table")
            for dt, arr in ov[part].items():
                _check_table(f"overhead.{arch}.{part}.{dt}", {**ov, "ms": arr}, ("hidden", "tokens"))


# ----- making one --------------------------------------------------------------------------
def profile_device(
    threads: int,
    runtime: str = "eager",
    hidden_sizes: tuple[int, ...] = (384,),
    quick: bool = False,
    progress: bool = True,
    *,
    tokens: tuple[int, ...] | None = None,
    head_dims: tuple[int, ...] = (32, 64),
    device: str | None = None,
    passes: int | None = None,
) -> dict:
    """Microbenchmark this device into a profile (about a minute on 2 CPU cores by default; measured on
    the 2-core AMD EPYC at hidden 384: openvino with its four formats 68 s, of which static int8 pays
    ~0.5 s of nncf.quantize per Linear shape; onnxruntime with three 20 s).

    `hidden_sizes` centres the width grid on the models you will search; `tokens` are the
    batch*seq_len points (default 8, 32, 128, 512; `quick`: 32 and 128, a coarser width
    grid, one pass). Predictions interpolate between grid points and extrapolate beyond.
    """
    import torch

    from ..devices.latency import fixed_threads
    from .microbench import grid, run_benchmarks

    _check_runtime(runtime)
    from ..errors import UserError

    try:
        get_runtime(runtime).require()
    except UserError as exc:
        raise ProfileError(str(exc)) from None
    onnx_kernels = get_runtime(runtime).kernel is not None  # a runtime that reads ONNX: its CPU kernel graphs
    if onnx_kernels:
        if device not in (None, "cpu"):
            raise ProfileError(f"runtime {runtime} is profiled on the CPU only (device cpu)")
        device = "cpu"
    device = device or _default_device()
    if device not in ("cpu", "cuda") or (device == "cuda" and not torch.cuda.is_available()):
        allowed = "cpu, cuda" if torch.cuda.is_available() else "cpu (no CUDA device here)"
        raise ProfileError(f"cannot profile device {device!r}; allowed: {allowed}")
    if not hidden_sizes or any(int(h) < 8 for h in hidden_sizes):
        raise ProfileError(f"hidden_sizes must be integers >= 8, got {hidden_sizes!r}")
    for h in hidden_sizes:
        if not any(int(h) % int(d) == 0 for d in head_dims):
            raise ProfileError(f"hidden size {h} is not a multiple of any head_dims {tuple(head_dims)}")
    tokens = tuple(sorted({int(t) for t in (tokens or ((32, 128) if quick else (8, 32, 128, 512)))}))
    hidden_sizes = tuple(sorted({int(h) for h in hidden_sizes}))
    head_dims = tuple(int(d) for d in head_dims)
    widths, heads_grid = grid(hidden_sizes, head_dims, quick)
    # the formats it profiles and runs on this CPU (ONNX Runtime: no bfloat16; eager: no static int8);
    # dynamic int8 is CPU-only
    dtypes = tuple(d for d in get_runtime(runtime).profile_formats() if not (d == "int8" and device == "cuda"))
    passes = passes or (1 if quick or onnx_kernels else 2)  # ONNX kernels: one pass keeps it within minutes
    started = time.perf_counter()
    bar = _progress(progress)
    with bar, fixed_threads(threads):
        task = bar.add_task("profiling", total=None)

        def step(what: str, total: int) -> None:
            bar.update(task, advance=1, total=total, description=what)

        raw = run_benchmarks(dtypes=dtypes, tokens=tokens, widths=widths, heads_grid=heads_grid,
                             head_dims=head_dims, hidden_sizes=hidden_sizes, device=device, passes=passes,
                             quick=quick, step=step, runtime=runtime, threads=threads)
    return _build_profile(raw, threads, runtime, device, hidden_sizes=hidden_sizes, tokens=tokens, widths=widths,
                         heads_grid=heads_grid, head_dims=head_dims, dtypes=dtypes, quick=quick, passes=passes,
                         seconds=time.perf_counter() - started)


def _build_profile(raw: dict, threads: int, runtime: str, device: str, *, hidden_sizes, tokens, widths, heads_grid,
                  head_dims, dtypes, quick: bool, passes: int, seconds: float) -> dict:
    """The profile document from raw timings {key: ms} (see `searcher.cost.microbench`)."""
    from .microbench import activation_tables, attention_tables, linear_tables, overhead_table

    tables = {
        "linear": linear_tables(raw, dtypes, tokens, widths, hidden_sizes),
        "activation": activation_tables(raw, tokens, widths, dtypes),
        "attention": attention_tables(raw, head_dims, heads_grid, tokens, dtypes),
    }
    return {
        "kind": PROFILE_KIND,
        "version": PROFILE_VERSION,
        "fingerprint": fingerprint(threads, runtime, device),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "profile_seconds": round(seconds, 1),
        "settings": {"hidden_sizes": list(hidden_sizes), "tokens": list(tokens), "quick": quick, "passes": passes,
                     "formats": list(dtypes)},
        **tables,
        "overhead": {"bert": overhead_table(raw, tables, dtypes, hidden_sizes, tokens, head_dims)},
    }


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    disable=not enabled)
