"""Deployment artifacts (`slimformer export --format onnx|openvino`): the candidate as the runtime
that timed it runs it, loadable without slimformer.

An artifact folder holds the model file(s) (ONNX: model.onnx with the int8 nodes as timed; OpenVINO:
model.xml + model.bin), the tokenizer or image processor files, and manifest.json: the sha256 of
every file, the inputs and outputs (Hugging Face names, dynamic batch and sequence axes), how it was
verified (max abs difference of the first output against the PyTorch model, quality re-scored from
the artifact itself), the plan and the trial's figures. Nothing is written before the verification
ran; the folder is staged next to the target and moved in complete (`methods.export.move_into`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

from ..errors import UserError
from .registry import RUNTIMES
from .runtime import ArtifactRunner, ArtifactSession, Runtime

__all__ = ["ARTIFACT_FORMATS", "ARTIFACT_VERSION", "EXPORT_FORMATS", "build_artifact", "load_artifact",
           "ArtifactModel", "write_artifact", "default_format", "export_model", "is_artifact", "open_artifact",
           "require_format", "evaluate_artifact", "runtime_of_format"]

EXPORT_FORMATS = tuple(dict.fromkeys(r.artifact_format for r in RUNTIMES.values()))  # pytorch, onnx, openvino
ARTIFACT_FORMATS = tuple(r.artifact_format for r in RUNTIMES.values() if r.build is not None)
ARTIFACT_VERSION = 1
CHECK_CALLS = 3  # model calls (example input + first quality batches) compared with PyTorch output by output


def runtime_of_format(fmt: str) -> Runtime:
    """The runtime that writes and loads an artifact format (onnx: onnxruntime, openvino: openvino)."""
    for runtime in RUNTIMES.values():
        if runtime.artifact_format == fmt and runtime.build is not None:
            return runtime
    raise UserError(f"unknown artifact format {fmt!r}; allowed: {', '.join(ARTIFACT_FORMATS)}")


def build_artifact(fmt: str, model, inputs: dict, folder: Path, options: dict | None = None) -> dict:
    """Write the runtime's model file(s) for a built candidate into `folder`; returns its facts."""
    return runtime_of_format(fmt).build(model, inputs, folder, options or {})


def load_artifact(fmt: str, files: dict[str, bytes], threads: int) -> ArtifactSession:
    """A session from the (already verified) bytes of an artifact's files."""
    return runtime_of_format(fmt).load(files, threads)


class ArtifactModel:
    """An artifact called like the PyTorch model (keyword tensors in, outputs by name), so the task
    scores it with the same code. With `reference`, the first CHECK_CALLS calls also run the PyTorch
    model and record the largest absolute difference of every output in `max_abs_diff`."""

    def __init__(self, session: ArtifactSession, config, reference=None):
        self.session, self.config, self.reference = session, config, reference
        self.max_abs_diff: dict[str, float] = {}
        self.calls = 0

    def __call__(self, **inputs):
        import numpy as np
        import torch

        got = self.session({k: v.numpy() for k, v in inputs.items()})
        out = {name: torch.from_numpy(np.asarray(v)) for name, v in zip(self.session.outputs, got)}
        if self.reference is not None and self.calls < CHECK_CALLS:
            with torch.inference_mode():
                ref = self.reference(**inputs)
            for name, v in out.items():
                diff = float((v.float() - ref[name].float()).abs().max()) if name in ref else float("nan")
                self.max_abs_diff[name] = max(self.max_abs_diff.get(name, 0.0), diff)
        self.calls += 1
        return SimpleNamespace(**out)


def is_artifact(folder: Path) -> bool:
    """A folder whose manifest names an onnx/openvino artifact (not the pytorch safetensors layout)."""
    from slimformer.methods.export import MANIFEST

    try:
        return json.loads((folder / MANIFEST).read_text()).get("format") in ARTIFACT_FORMATS
    except (OSError, ValueError, AttributeError):
        return False


def open_artifact(folder: Path, threads: int) -> tuple[dict, ArtifactSession]:
    """(manifest, session) after checking every file against its sha256 (ExportError otherwise)."""
    from slimformer.methods.export import ExportError, verified_files

    manifest, data = verified_files(folder, ())
    fmt = manifest.get("format")
    model_files = manifest.get("model_files")
    if fmt not in ARTIFACT_FORMATS or not isinstance(model_files, list) or not set(model_files) <= set(data):
        raise ExportError(f"{folder}/manifest.json does not describe an onnx or openvino artifact")
    return manifest, load_artifact(fmt, data, threads)


def default_format(runtime: str) -> str:
    """The artifact format of the runtime a trial was timed in."""
    return RUNTIMES[runtime].artifact_format if runtime in RUNTIMES else "pytorch"


def export_model(fmt: str, bench, model, plan, out: Path, metrics: dict, force: bool = False, options: dict | None = None,
                 log=print) -> None:
    """`slimformer export`'s writing step: the pytorch layout (slimformer loads it) or a verified artifact."""
    from slimformer.methods import save_compressed

    if fmt == "pytorch":
        save_compressed(model, plan, out, tokenizer=bench.tokenizer, metrics=metrics, force=force)
        return
    from slimformer.methods import model_size

    from .latency import device_facts

    size = model_size(model, plan.group_size)
    info = {"plan": plan.to_dict(), "trial": metrics, "params": size["params"], "simulated": size["simulated"],
            "task": bench.task.name, "model": bench.cfg.model.name,
            "timed_on": {**device_facts(bench.cfg.device.threads), "batch_size": bench.cfg.device.batch_size,
                         "seq_len": bench.cfg.device.seq_len},
            "runtime_versions": {n: r.version() for n, r in RUNTIMES.items() if r.version is not None}}
    write_artifact(fmt, bench, model, out, info, options, log=log)


def require_format(fmt: str) -> None:
    """UserError when the runtime that loads `fmt` is not installed (before any model is built)."""
    if fmt != "pytorch":
        runtime_of_format(fmt).require()


def evaluate_artifact(bench, folder: Path, rounds: int | None = None) -> dict:
    """Quality (full validation) and latency against the study's baseline of an artifact folder,
    loaded from its sha256-checked bytes; the keys of `Workbench.score`."""
    manifest, session = open_artifact(folder, bench.cfg.device.threads)
    art = ArtifactModel(session, bench.model.config)
    q = bench.quality(art, full=True)
    lat = bench.latency_of({"candidate": ArtifactRunner(session, bench.inputs)}, rounds)
    size = sum((folder / f).stat().st_size for f in manifest["model_files"]) / 2**20
    return {**q, "latency_ms": lat["candidate"].median_ms, "latency_p10_ms": lat["candidate"].p10_ms,
            "latency_p90_ms": lat["candidate"].p90_ms, "baseline_latency_ms": lat["baseline"].median_ms,
            "speedup": lat["candidate"].speedup, "params": manifest.get("params"), "size_mb": size,
            "simulated": bool(manifest.get("simulated")), "runtime": manifest["format"], "plan": manifest.get("plan")}


def write_artifact(fmt: str, bench, model, out: Path, info: dict, options: dict | None = None, log=print) -> dict:
    """Build, verify and write the artifact of `model` (built by `bench`) into `out`; returns the manifest."""
    from slimformer.methods.export import MANIFEST, ExportError, move_into, sha256_file

    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        log(f"building the {fmt} artifact ...")
        facts = build_artifact(fmt, model, bench.inputs, stage, options)
        session = load_artifact(fmt, {f: (stage / f).read_bytes() for f in facts["files"]}, bench.cfg.device.threads)
        log("verifying it: outputs against the PyTorch model, quality re-scored from the artifact ...")
        art = ArtifactModel(session, bench.model.config, reference=model)
        art(**bench.inputs)
        quality = bench.quality(art, full=True)
        first = session.outputs[0]
        log(f"max abs difference of {first} vs PyTorch: {art.max_abs_diff.get(first, float('nan')):.2e}; "
            f"{quality['metric']} from the artifact {quality['quality']:.2f}")
        if bench.tokenizer is not None:
            bench.tokenizer.save_pretrained(str(stage))
        dims = {k: ["batch", "sequence"] if v.dim() == 2 else ["batch", *v.shape[1:]] for k, v in bench.inputs.items()}
        manifest = {
            "format": fmt, "format_version": ARTIFACT_VERSION, "model_files": facts["files"],
            "inputs": {k: dims[k] for k in session.inputs}, "outputs": session.outputs,
            "dynamic_axes": True, "int8_layers": facts["int8_layers"], "int8_weights": facts["int8_weights"],
            **({"compile_config": facts["compile_config"]} if facts.get("compile_config") else {}),
            "verification": {"max_abs_diff": art.max_abs_diff, "checked_calls": min(art.calls, CHECK_CALLS),
                             **{k: v for k, v in quality.items()}, "split": "full validation"},
            **info,
        }
        manifest["files"] = {p.name: sha256_file(p) for p in sorted(stage.iterdir()) if p.is_file()}
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str))
        move_into(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return manifest
