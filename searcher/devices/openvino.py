"""The OpenVINO runtime (`device.runtime: openvino`, `pip install 'slimformer[openvino]'`).

A candidate's float32 copy is exported to ONNX exactly as for ONNX Runtime (Hugging Face names,
dynamic batch and sequence axes), read by `openvino.convert_model`, and compiled for the CPU with
`device.threads` inference threads and COMPILE_CONFIG: the LATENCY performance hint, denormals flushed
to zero, no CPU pinning (the other runners of an interleaved measurement share the cores), and the
inference precision the plan asks for: f32, or bf16 when its layers are bits 16. OpenVINO sets that
precision for the whole model, so a plan mixing bits 32 and 16 is refused here (`model_wide_precision`).
A plan whose every layer is int8 leaves the rest (attention scores, norms, embeddings) to the plugin's own
default precision on this CPU, what a plain `compile_model` gives a user: bf16 where the CPU computes it
natively. On an AMD EPYC with AVX512-BF16 that timed a finished static-int8 MiniLM 5.22x instead of 4.94x at
the same test quality (85.87 vs 85.88; 30 interleaved rounds, session 14 note on issue 24).
Flushing denormals left the outputs of a finished MiniLM plan unchanged and timed it slightly faster
(benchmarks/results/denormals_results.md). The static study shape timed no faster than the dynamic graph, so the
IR keeps the dynamic axes and the artifact that is timed is the one that is handed over.

What runs on a real kernel is read from the CPU plugin at run time (`formats`: its
OPTIMIZATION_CAPABILITIES): bf16 where it lists BF16 (AVX512-BF16 or AMX), int8 with calibrated
activations where it lists INT8. The artifact carries the compile settings it was timed with
(compile.json, also in the export's manifest) and `load` compiles with them.

Int8 layers (bits 8), by the plan's `int8_scheme`:
- dynamic: int8 weights through NNCF weight compression (INT8_SYM, per-channel, only those layers'
  MatMuls; the embeddings stay float): the MatMul reads int8 weights and decompresses them in the kernel,
  activations stay in the float precision;
- static: `nncf.quantize` (post-training quantization, TRANSFORMER model type) calibrated on the study's
  calibration inputs, every MatMul outside the int8 layers in its ignored scope: weights and activations
  in int8 (real int8 kernels: VNNI/AMX).
Simulated 4/3/2 bits run in float as in eager. `slimformer profile --runtime openvino` runs the
microbenchmark grid's kernel graphs through `kernel`, in each format it runs here (a table per format).

The CPU plugin flushes denormals by setting FTZ/DAZ on the thread that compiles the model, and a
synchronous inference runs on the calling thread: left alone, that state would stay on the thread
and PyTorch's own kernels there (the stock baseline, eager candidates) would flush too. `compile_ir`
puts the caller's state back, and `infer` sets the compiled model's for each inference only.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import tempfile
import warnings
from pathlib import Path

from .runtime import ArtifactSession, Runtime, module_version, optional_module

__all__ = ["RUNTIME", "INSTALL_HINT", "convert", "compile_ir", "infer", "flushes_denormals", "save_ir",
           "IR_FILES", "COMPILE_CONFIG", "COMPILE_FILE", "kernel", "session", "compile_config_for", "default_precision", "capabilities", "no_telemetry", "quiet_nncf"]

def no_telemetry() -> None:
    """OpenVINO and NNCF send usage telemetry unless told not to: each model conversion or quantization
    forks a process (`fork` in a threaded process) that posts to a web endpoint. On a machine without
    internet the forked sender hung in the resolver with a lock its parent's threads held, and the
    search, done, waited for it at exit for good (a feasibility run here, 10 minutes until it was killed).
    slimformer sends nothing: its processes answer OpenVINO's consent check with "declined", as its
    telemetry does for CI jobs, without touching the user's consent file."""
    try:
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
    except ImportError:  # no OpenVINO here, or a telemetry package of another shape: nothing to silence
        return
    OptInChecker.check = lambda self, *args, **kwargs: ConsentCheckResult.DECLINED


no_telemetry()  # at import: before anything here converts or quantizes

INSTALL_HINT = "device.runtime openvino needs: pip install 'slimformer[openvino]'"
# how the CPU plugin compiles every timed model (the precision hint per plan: compile_config_for); the
# artifact carries what it was compiled with (COMPILE_FILE, and the export's manifest)
COMPILE_CONFIG = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "CPU_DENORMALS_OPTIMIZATION": True}
IR_FILES = ("model.xml", "model.bin")
COMPILE_FILE = "compile.json"


@functools.lru_cache(maxsize=1)
def capabilities() -> tuple[str, ...]:
    """The CPU plugin's OPTIMIZATION_CAPABILITIES on this machine (e.g. FP32, BF16, INT8); () without
    OpenVINO."""
    try:
        import openvino as ov
    except ImportError:
        return ()
    return tuple(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def _formats() -> dict[str, str | None]:
    caps = capabilities()
    return {"float32": None, "int8": None,
            "bfloat16": None if "BF16" in caps else "the CPU plugin lists no BF16 capability on this CPU "
                                                    "(it needs AVX512-BF16 or AMX)",
            "int8_static": None if "INT8" in caps else "the CPU plugin lists no INT8 capability on this CPU"}


@functools.lru_cache(maxsize=1)
def default_precision() -> str:
    """The inference precision the CPU plugin picks when not told (its INFERENCE_PRECISION_HINT default on
    this CPU: bf16 where it computes bf16 natively, f32 elsewhere); f32 without OpenVINO."""
    try:
        import openvino as ov
    except ImportError:
        return "f32"
    return ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()


def compile_config_for(bf16: bool, all_int8: bool = False) -> dict:
    """COMPILE_CONFIG with the inference precision of a plan: bf16 with bits-16 layers; for a plan whose
    every layer is int8 (nothing asks for float32), the plugin's own default on this CPU (what a user's
    plain `compile_model` gets: bf16 here only where the CPU computes it natively); f32 otherwise."""
    precision = "bf16" if bf16 else default_precision() if all_int8 else "f32"
    return {**COMPILE_CONFIG, "INFERENCE_PRECISION_HINT": precision}


def _matmul_names(model) -> list[str]:
    return [op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == "MatMul"]


@contextlib.contextmanager
def quiet_nncf():
    """NNCF prints a bit-width table for every call and a rich progress bar on stdout: a search prints
    its own progress."""
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        nncf_log.setLevel(level)


def convert(onnx_path: str | Path, int8_modules: list[str] = (), calibration: list[dict] | None = None):
    """The OpenVINO model of a float32 ONNX export; the MatMuls of `int8_modules` get int8 weights, or
    with `calibration` (input dicts) int8 weights and activations (nncf.quantize)."""
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
    others = [n for n in names if n not in keep]
    # NNCF compiles models on this thread to collect statistics, and the CPU plugin sets FTZ/DAZ on it: put
    # the thread's denormal handling back afterwards (as compile_ir does)
    with quiet_nncf(), _denormals(flushes_denormals()):
        if calibration is None:
            ignored = nncf.IgnoredScope(names=others, types=["Gather"], validate=False)
            return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_SYM, ignored_scope=ignored)
        ignored = nncf.IgnoredScope(names=others, validate=False)
        return nncf.quantize(model, nncf.Dataset(calibration), model_type=nncf.ModelType.TRANSFORMER,
                             subset_size=len(calibration), ignored_scope=ignored)


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
    """model.xml + model.bin of a built candidate (through the same float32 ONNX graph as ONNX Runtime),
    and compile.json: the settings it is compiled with (bf16 precision when it has bits-16 layers)."""
    from slimformer.methods import plan_of

    from .graph import calibration_feeds, export_onnx, float_copy, has_bf16

    plan = plan_of(model)
    static = plan is not None and plan.int8_scheme == "static"
    bf16 = has_bf16(model)
    fmodel, int8 = float_copy(model, RUNTIME.refusal(16))
    calibration = None
    if int8 and static:
        calibration = calibration_feeds(options, inputs, "int8_scheme static")
    with tempfile.TemporaryDirectory(prefix="slimformer-openvino-") as tmp:
        path = export_onnx(fmodel, inputs, Path(tmp) / "model.onnx")
        files = save_ir(convert(path, int8, calibration), folder)
    bits = () if plan is None or plan.bits is None else plan.bits if isinstance(plan.bits, tuple) else (plan.bits,)
    config = compile_config_for(bf16, bool(bits) and set(bits) == {8})
    (folder / COMPILE_FILE).write_text(json.dumps(config, sort_keys=True))
    how = None
    if int8:
        how = (f"int8 weights and activations (nncf.quantize, {len(calibration)} calibration inputs)" if static
               else "int8_sym weight compression")
    return {"files": [*files, COMPILE_FILE], "int8_layers": int8, "int8_weights": how, "compile_config": config,
            "int8_scheme": ("static" if static else "dynamic") if int8 else None}


def load(files: dict[str, bytes], threads: int) -> ArtifactSession:
    """The artifact compiled with the settings it carries (compile.json; COMPILE_CONFIG without one)."""
    import numpy as np

    ov = optional_module("openvino", INSTALL_HINT)
    weights = ov.Tensor(np.frombuffer(files["model.bin"], dtype=np.uint8).copy())
    config = json.loads(files[COMPILE_FILE]) if COMPILE_FILE in files else None
    return session(compile_ir(ov.Core().read_model(files["model.xml"].decode(), weights), threads, config))


def session(compiled) -> ArtifactSession:
    """A compiled model as an ArtifactSession: one inference per call, every output read from it."""
    import numpy as np

    request = infer(compiled)

    def run(feed):
        res = request(feed)
        return [np.array(res[o]) for o in compiled.outputs]

    return ArtifactSession(run, [i.get_any_name() for i in compiled.inputs], [o.get_any_name() for o in compiled.outputs])


def kernel(path: Path, threads: int, int8_modules=(), fmt: str = "float32", calibration: list[dict] | None = None):
    """A microbenchmark kernel graph (float32 ONNX, `searcher.cost.onnxbench`) as this runtime runs a
    candidate's, in the format `fmt`: `convert` (the MatMuls of `int8_modules` weight-compressed, or with
    int8_static quantized by nncf.quantize on the `calibration` feeds), `compile_ir` (bfloat16: the
    whole graph at bf16 inference precision, as a bits-16 plan's model is); returns run(feed). NNCF
    computes the compressed int8 weights with numpy here instead of compiling an OpenVINO model per
    weight shape (about 0.5 s each): the graph it writes is the same."""
    import os

    if fmt == "int8_static" and int8_modules and not calibration:
        raise ValueError("an int8_static kernel needs calibration feeds")
    key = "NNCF_DISABLE_OPTIMIZED_COMPRESSION"
    before = os.environ.get(key)
    os.environ[key] = "1"
    try:
        model = convert(path, list(int8_modules), calibration if fmt == "int8_static" else None)
    finally:
        if before is None:
            del os.environ[key]
        else:
            os.environ[key] = before
    return infer(compile_ir(model, threads, compile_config_for(fmt == "bfloat16", fmt.startswith("int8"))))


RUNTIME = Runtime(
    name="openvino", summary="OpenVINO, CPU", artifact_format="openvino", formats=_formats,
    model_wide_precision=True, requires=("onnx", "openvino", "nncf"), install_hint=INSTALL_HINT, profiled=True,
    profiled_formats=("float32", "bfloat16", "int8", "int8_static"),
    version=lambda: module_version("openvino", lambda ov: ov.get_version()), build=build, load=load, kernel=kernel)
