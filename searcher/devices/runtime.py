"""What a deployment runtime declares (`device.runtime`), once, in its own module of this package.

A `Runtime` says which number formats it runs on a real kernel ON THIS CPU (`formats`: decided from the
device at run time, e.g. OpenVINO's OPTIMIZATION_CAPABILITIES or PyTorch's oneDNN; a format it cannot
run here is refused with the reason), which
modules it needs and the line that installs them, whether `slimformer profile` has a microbenchmark
grid for it (and, for a runtime that reads ONNX, how that grid's kernel graphs run in it), the artifact
format `export` writes for a trial timed in it, and how a built candidate becomes a runnable thing:
either `make_runner` (eager PyTorch, torch.compile: the module itself) or `build` + `load` (ONNX
Runtime, OpenVINO: the artifact file(s) written into a folder, then loaded from their bytes). The
latency runner of such a runtime IS the artifact `export` writes: the same two functions make both.
`searcher.devices.registry` lists the runtimes.
"""

from __future__ import annotations

import importlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

__all__ = ["Runtime", "ArtifactSession", "ArtifactRunner", "optional_module", "module_version", "FORMATS",
           "format_of", "SIMULATED"]

# the number formats a layer can run in: float32 (bits 32), bfloat16 (bits 16), int8 without calibration
# (bits 8, plan.int8_scheme dynamic: PyTorch/ONNX Runtime quantize activations per call, OpenVINO keeps
# them float) and int8 with calibrated activations (bits 8, int8_scheme static)
FORMATS = ("float32", "bfloat16", "int8", "int8_static")
SIMULATED = "simulated"  # bits 4/3/2: rounded to the low-bit grid, stored and run in float32 everywhere


def format_of(bits: int, scheme: str = "dynamic") -> str:
    """The number format a layer of `bits` (and int8 scheme) runs in; SIMULATED for 4/3/2 bits."""
    if bits == 8:
        return "int8_static" if scheme == "static" else "int8"
    return {32: "float32", 16: "bfloat16"}.get(bits, SIMULATED)


def optional_module(name: str, hint: str):
    """The module `name`, imported; UserError with `hint` (the install line) when it is missing."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise UserError(hint) from None


def module_version(name: str, read: Callable = lambda module: module.__version__) -> str | None:
    """`read(module)` (its `__version__` unless told) of an installed module; None when it is missing."""
    try:
        module = importlib.import_module(name)
    except ImportError:
        return None
    return read(module)


class ArtifactSession:
    """A loaded artifact: call it with {input name: numpy array} -> list of numpy outputs."""

    def __init__(self, run, inputs: list[str], outputs: list[str]):
        self.run, self.inputs, self.outputs = run, inputs, outputs

    def __call__(self, feed: dict) -> list:
        import numpy as np

        return self.run({k: np.asarray(v) for k, v in feed.items() if k in self.inputs})


class ArtifactRunner:
    """A zero-argument callable running an artifact session on fixed inputs; `session` is kept, so
    the artifact that was timed can also be scored."""

    def __init__(self, session: ArtifactSession, inputs: dict):
        self.session = session
        self.feed = {k: v.numpy() for k, v in inputs.items() if k in session.inputs}

    def __call__(self) -> list:
        return self.session(self.feed)


@dataclass(frozen=True)
class Runtime:
    name: str
    summary: str
    artifact_format: str  # what `export` writes for a trial timed here (pytorch, onnx, openvino)
    # () -> {format: None when it runs on a real kernel on this CPU, else why not}, for every FORMATS entry;
    # read from the device at run time (cached by the runtime module)
    formats: Callable[[], dict[str, str | None]] = lambda: {"float32": None}
    # a plan whose float layers mix float32 and bfloat16 cannot run here (the precision is model-wide)
    model_wide_precision: bool = False
    # the formats `slimformer profile` times for it (a table each; where it runs them here: `profile_formats`);
    # a plan in another format has no prediction here, so the screen measures it instead of skipping it
    profiled_formats: tuple[str, ...] = ("float32", "bfloat16", "int8")
    fresh_process_cost: str | None = None  # what every fresh (isolated) trial process pays again, if much
    refused_methods: dict[str, str] = field(default_factory=dict)  # quant_method -> why it is not what runs
    requires: tuple[str, ...] = ()  # modules it imports
    install_hint: str | None = None
    profiled: bool = False  # `slimformer profile --runtime NAME` has a microbenchmark grid for it
    competes: bool = True  # timed for every candidate under `device.runtime: auto` when installed
    reads_int8_weights: bool = False  # quantizes int8 layers itself, with the weights plan.int8_weights names
    reads_attention: bool = False  # runs the PyTorch module, with the attention implementation plan.attention names
    version: Callable[[], str | None] | None = None
    make_runner: Callable | None = None  # (model, inputs, threads) -> zero-argument callable
    build: Callable | None = None  # (model, inputs, folder, options) -> {"files": [...], ...}
    load: Callable | None = None  # ({file name: bytes}, threads) -> ArtifactSession
    # (float32 ONNX file of one microbenchmark kernel graph, threads, int8 module names, format, calibration
    # feeds) -> run(feed): how `slimformer profile` runs its kernel graphs (searcher/cost/onnxbench.py) in a
    # runtime that reads ONNX, in one of its `profiled_formats` (bfloat16: the whole graph at that precision;
    # int8 / int8_static: the int8 modules quantized as a candidate's are, static with the calibration feeds)
    kernel: Callable | None = None

    def require(self) -> None:
        """UserError with the install line when a module this runtime needs is missing."""
        for module in self.requires:
            optional_module(module, self.install_hint or f"device.runtime {self.name} needs the module {module}")

    def installed(self) -> bool:
        try:
            self.require()
        except UserError:
            return False
        return True

    def native_formats(self) -> tuple[str, ...]:
        """The formats this runtime runs on a real kernel on this CPU."""
        found = self.formats()
        return tuple(f for f in FORMATS if f in found and found[f] is None)

    def profile_formats(self) -> tuple[str, ...]:
        """The formats `slimformer profile` times for it on this CPU: those it profiles and runs here."""
        native = self.native_formats()
        return tuple(f for f in self.profiled_formats if f in native)

    def refusal(self, bits: int, scheme: str = "dynamic") -> str | None:
        """Why layers of `bits` (int8: in `scheme`) cannot run in this runtime here, or None when they can
        (simulated 4/3/2 bits run wherever float32 does)."""
        fmt = format_of(bits, scheme)
        found = self.formats()
        reason = found.get("float32" if fmt == SIMULATED else fmt, "not supported")
        if reason is None:
            return None
        what = f"bits {bits}" + (f" ({fmt})" if bits == 8 else "")
        return f"{what} cannot run with device.runtime {self.name}: {reason}"

    def predicts(self, bits, scheme: str = "dynamic") -> bool:
        """Whether its device profile covers every format of a plan with these bit-widths."""
        return all(format_of(b, scheme) in (*self.profiled_formats, SIMULATED) for b in set(bits))

    def plan_refusal(self, bits, scheme: str = "dynamic") -> str | None:
        """Why a plan whose kept layers have these bit-widths cannot run here, or None."""
        for b in sorted(set(bits), reverse=True):
            reason = self.refusal(b, scheme)
            if reason:
                return reason
        if self.model_wide_precision and {32, 16} <= set(bits):
            return (f"device.runtime {self.name} sets its float precision for the whole model: a plan cannot "
                    "mix bits 32 and 16")
        return None

    def runner(self, model, inputs: dict, threads: int, options: dict | None = None):
        """A zero-argument callable running the built candidate on `inputs` as this runtime runs it."""
        if self.build is None:
            return self.make_runner(model, inputs, threads)
        return ArtifactRunner(self.artifact_session(model, inputs, threads, options), inputs)

    def artifact_session(self, model, inputs: dict, threads: int, options: dict | None = None) -> ArtifactSession:
        """The candidate's artifact, built in a private folder and loaded from its bytes."""
        self.require()
        with tempfile.TemporaryDirectory(prefix=f"slimformer-{self.name}-") as tmp:
            facts = self.build(model, inputs, Path(tmp), options or {})
            return self.load({f: (Path(tmp) / f).read_bytes() for f in facts["files"]}, threads)
