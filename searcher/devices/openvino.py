"""The OpenVINO runtime (`device.runtime: openvino`, `pip install 'slimformer[openvino]'`).

A candidate's float32 copy is exported to ONNX exactly as for ONNX Runtime (Hugging Face names,
dynamic batch and sequence axes), read by `openvino.convert_model`, and compiled for the CPU with
`device.threads` inference threads and COMPILE_CONFIG: the LATENCY performance hint, float32
inference precision (no silent bf16 on CPUs that have it), denormals flushed to zero, and no CPU
pinning (the other runners of an interleaved measurement share the cores). Flushing denormals
left the outputs of a finished MiniLM plan unchanged and timed it slightly faster (3.37x vs 3.27x
against stock PyTorch; with pretrained weights 3.58x vs 3.48x; within the spread of one run:
benchmarks/denormals_results.md). The static study shape timed no faster than the dynamic graph
(107.5 vs 107.45 ms for MiniLM at 128 tokens, 2 threads, loaded machine), so the IR keeps the
dynamic axes and the artifact that is timed is the one that is handed over.

Layers a plan stores in int8 get int8 weights through NNCF weight compression (INT8_SYM,
per-channel, only those layers' MatMuls; the embeddings stay float32): the MatMul reads int8
weights and decompresses them in the kernel, activations stay float32. OpenVINO has no int8
activations without calibration (NNCF PTQ), which this runtime does not do. bits 16 is refused
(inference precision is pinned to float32); simulated 4/3/2 bits run in float32 as in eager.
`slimformer profile --runtime openvino` runs the microbenchmark grid's kernel graphs through `kernel`.

The CPU plugin flushes denormals by setting FTZ/DAZ on the thread that compiles the model, and a
synchronous inference runs on the calling thread: left alone, that state would stay on the thread
and PyTorch's own kernels there (the stock baseline, eager candidates) would flush too. `compile_ir`
puts the caller's state back, and `infer` sets the compiled model's for each inference only.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from pathlib import Path

from .runtime import ArtifactSession, Runtime, module_version, optional_module

__all__ = ["RUNTIME", "INSTALL_HINT", "convert", "compile_ir", "infer", "flushes_denormals", "save_ir",
           "IR_FILES", "COMPILE_CONFIG", "kernel"]

INSTALL_HINT = "device.runtime openvino needs: pip install 'slimformer[openvino]'"
# how the CPU plugin compiles every timed model; the manifest of an openvino artifact carries it
COMPILE_CONFIG = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "CPU_DENORMALS_OPTIMIZATION": True}
IR_FILES = ("model.xml", "model.bin")


def _matmul_names(model) -> list[str]:
    return [op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == "MatMul"]


def convert(onnx_path: str | Path, int8_modules: list[str] = ()):
    """The OpenVINO model of a float32 ONNX export; the MatMuls of `int8_modules` get int8 weights."""
    ov = optional_module("openvino", INSTALL_HINT)
    model = ov.convert_model(str(onnx_path))
    if not int8_modules:
        return model
    import nncf

    from .graph import node_prefixes

    prefixes = node_prefixes(int8_modules)
    names = _matmul_names(model)
    keep = [n for n in names if any(n.replace(".", "/").startswith(p) for p in prefixes)]
    if not keep:
        raise RuntimeError("no MatMul of the int8 layers was found in the OpenVINO model")
    ignored = nncf.IgnoredScope(names=[n for n in names if n not in keep], types=["Gather"], validate=False)
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.ERROR)  # NNCF prints a bit-width table for every call
    try:  # and a rich progress bar on stdout: a search prints its own progress
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_SYM, ignored_scope=ignored)
    finally:
        nncf_log.setLevel(level)


def flushes_denormals() -> bool:
    """Whether this thread flushes denormal floats to zero (FTZ): the smallest normal double halved is 0."""
    return 2.2250738585072014e-308 / 2 == 0.0


@contextlib.contextmanager
def _denormals(flush: bool):
    """This thread's FTZ/DAZ set to `flush` inside, put back as it was afterwards."""
    import torch

    before = flushes_denormals()
    if flush != before:
        torch.set_flush_denormal(flush)
    try:
        yield
    finally:
        if flushes_denormals() != before:
            torch.set_flush_denormal(before)


def compile_ir(model, threads: int, overrides: dict | None = None):
    """Compiled for the CPU: `threads` threads, COMPILE_CONFIG (with `overrides`), no pinning; the
    calling thread's denormal handling is left as it was (run it with `infer`)."""
    ov = optional_module("openvino", INSTALL_HINT)
    config = {**COMPILE_CONFIG, **(overrides or {}), "INFERENCE_NUM_THREADS": threads, "ENABLE_CPU_PINNING": False}
    with _denormals(flushes_denormals()):
        return ov.Core().compile_model(model, "CPU", config)


def infer(compiled):
    """run(feed) -> the infer request's results, with denormals flushed during the inference only when
    the model was compiled with CPU_DENORMALS_OPTIMIZATION."""
    request = compiled.create_infer_request()
    flush = bool(compiled.get_property("CPU_DENORMALS_OPTIMIZATION"))

    def run(feed):
        with _denormals(flush):
            return request.infer(feed)

    return run


def save_ir(model, folder: Path) -> list[str]:
    """model.xml + model.bin in `folder` (weights kept in their precision: no float16 compression)."""
    ov = optional_module("openvino", INSTALL_HINT)
    ov.save_model(model, str(folder / IR_FILES[0]), compress_to_fp16=False)
    return list(IR_FILES)


def build(model, inputs: dict, folder: Path, options: dict) -> dict:
    """model.xml + model.bin of a built candidate (through the same float32 ONNX graph as ONNX Runtime)."""
    from .graph import export_onnx, float_copy

    fmodel, int8 = float_copy(model, RUNTIME.refusal(16))
    with tempfile.TemporaryDirectory(prefix="slimformer-openvino-") as tmp:
        path = export_onnx(fmodel, inputs, Path(tmp) / "model.onnx")
        files = save_ir(convert(path, int8), folder)
    return {"files": files, "int8_layers": int8, "int8_weights": "int8_sym weight compression" if int8 else None,
            "compile_config": COMPILE_CONFIG}


def load(files: dict[str, bytes], threads: int) -> ArtifactSession:
    import numpy as np

    ov = optional_module("openvino", INSTALL_HINT)
    weights = ov.Tensor(np.frombuffer(files["model.bin"], dtype=np.uint8).copy())
    compiled = compile_ir(ov.Core().read_model(files["model.xml"].decode(), weights), threads)
    request = infer(compiled)

    def run(feed):
        res = request(feed)
        return [np.array(res[o]) for o in compiled.outputs]

    return ArtifactSession(run, [i.get_any_name() for i in compiled.inputs], [o.get_any_name() for o in compiled.outputs])


def kernel(path: Path, threads: int, int8_modules=()):
    """A microbenchmark kernel graph (float32 ONNX, `searcher.cost.onnxbench`) as this runtime runs a
    candidate's: `convert` (the MatMuls of `int8_modules` weight-compressed), `compile_ir`; returns
    run(feed). NNCF computes the int8 weights with numpy here instead of compiling an OpenVINO model per
    weight shape (about 0.5 s each): the graph it writes is the same."""
    import os

    key = "NNCF_DISABLE_OPTIMIZED_COMPRESSION"
    before = os.environ.get(key)
    os.environ[key] = "1"
    try:
        model = convert(path, list(int8_modules))
    finally:
        if before is None:
            del os.environ[key]
        else:
            os.environ[key] = before
    return infer(compile_ir(model, threads))


RUNTIME = Runtime(
    name="openvino", summary="OpenVINO, CPU", artifact_format="openvino", real_bits=(32, 8),
    refused={16: "its CPU inference precision is pinned to float32 here (bf16 only pays with AMX)"},
    requires=("onnx", "openvino", "nncf"), install_hint=INSTALL_HINT, profiled=True,
    version=lambda: module_version("openvino", lambda ov: ov.get_version()), build=build, load=load, kernel=kernel)
