"""Deployment artifacts (`slimformer export --format onnx|openvino`): the candidate as the runtime
that timed it runs it, in a folder the user's library opens (searcher/devices/layout.py: a
sentence-transformers folder for sentence similarity, Optimum's layout otherwise), with a model card
(searcher/devices/card.py).

An artifact folder holds the model file(s) (ONNX: the graph with the int8 nodes as timed; OpenVINO:
the IR's .xml + .bin), config.json, the tokenizer or image processor files, the library's own
files, README.md (the card) and manifest.json: the sha256 of every file, the inputs and outputs
(Hugging Face names, dynamic batch and sequence axes), how it was verified, the plan and the
trial's figures. The verification compares what the task scores: the task's features (the direction of
the mean-pooled embedding for sentence similarity, whose cosine is the score; a classifier's logits) with the attention mask applied, so padding
positions, whose hidden states mean nothing, never count; the export fails (nothing written) when that
difference, as a relative error per example (||artifact - PyTorch|| / ||PyTorch|| of the vector the task
scores), exceeds SCORED_TOLERANCE in the median checked example (a wrong graph misses in every example;
static int8 misses by far more on the synthetic example input, random token ids outside its calibrated
ranges, than on real text). Quality is re-scored from the
artifact itself. Nothing is written before the verification ran; the folder is staged next to the
target and moved in complete (`layout.move_tree`).

Imports: errors, methods (public names).
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
           "require_format", "evaluate_artifact", "runtime_of_format", "masked_diff", "relative_errors", "check_scored",
           "SCORED_TOLERANCE"]

EXPORT_FORMATS = tuple(dict.fromkeys(r.artifact_format for r in RUNTIMES.values()))  # pytorch, onnx, openvino
ARTIFACT_FORMATS = tuple(r.artifact_format for r in RUNTIMES.values() if r.build is not None)
ARTIFACT_VERSION = 1
CHECK_CALLS = 3  # model calls (example input + first quality batches) compared with PyTorch output by output
# the relative error of what the task scores, in the median checked example, that an export accepts: int8
# kernels differ by a few percent on real text (a finished quickstart's static int8 export: 38.7% at most, on
# the random-token example input, with its validation Spearman equal to the PyTorch model's, 77.35); a wrong
# graph differs by about 100%
SCORED_TOLERANCE = 0.25
SCORED_NAMES = {"sentence-similarity": "mean-pooled embedding's direction"}  # otherwise the logits


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
    model and record, on real tokens only (`masked_diff`), the largest absolute difference of every
    output in `max_abs_diff`, and of what the task scores (`features(out, inputs)`: a pooled embedding,
    logits) in `scored_diff`, with the reference's largest magnitude in `scored_scale`."""

    def __init__(self, session: ArtifactSession, config, reference=None, features=None):
        self.session, self.config, self.reference, self.features = session, config, reference, features
        self.max_abs_diff: dict[str, float] = {}
        self.scored_diff, self.scored_scale = 0.0, 0.0
        self.scored_errors: list[float] = []  # the relative error of each checked example
        self.calls = 0

    def __call__(self, **inputs):
        import numpy as np
        import torch

        got = self.session({k: v.numpy() for k, v in inputs.items()})
        out = SimpleNamespace(**{name: torch.from_numpy(np.asarray(v)) for name, v in zip(self.session.outputs, got)})
        if self.reference is not None and self.calls < CHECK_CALLS:
            with torch.inference_mode():
                ref = self.reference(**inputs)
            self.compare(out, ref, inputs)
        self.calls += 1
        return out

    def compare(self, out, ref, inputs: dict) -> None:
        """Record the differences of one call (see the class docstring)."""
        import torch

        mask = inputs.get("attention_mask")
        for name in self.session.outputs:
            v = getattr(out, name)
            diff = masked_diff(v, ref[name], mask) if name in ref else float("nan")
            self.max_abs_diff[name] = max(self.max_abs_diff.get(name, 0.0), diff)
        if self.features is not None:
            with torch.inference_mode():
                mine, theirs = self.features(out, inputs).float(), self.features(ref, inputs).float()
            self.scored_diff = max(self.scored_diff, masked_diff(mine, theirs, mask))
            self.scored_scale = max(self.scored_scale, masked_diff(theirs, torch.zeros_like(theirs), mask))
            self.scored_errors += relative_errors(mine, theirs)

    @property
    def scored_rel_err(self) -> float:
        """The median example's relative error of what the task scores (0 before any check)."""
        import statistics

        return statistics.median(self.scored_errors) if self.scored_errors else 0.0


def relative_errors(a, b) -> list[float]:
    """||a_i - b_i|| / ||b_i|| for each example i of [batch, ...] outputs (a vector per example)."""
    a, b = a.float().flatten(1), b.float().flatten(1)
    return [float(e) for e in (a - b).norm(dim=1) / b.norm(dim=1).clamp_min(1e-6)]


def masked_diff(a, b, mask=None) -> float:
    """Largest |a - b|, over real tokens only when a is [batch, sequence, ...] and `mask` is the
    [batch, sequence] attention mask (padding positions are left out)."""
    d = (a.float() - b.float()).abs()
    if mask is not None and d.dim() >= 2 and tuple(d.shape[:2]) == tuple(mask.shape):
        keep = mask.bool()
        if not bool(keep.any()):
            return 0.0
        d = d[keep]
    return float(d.max()) if d.numel() else 0.0


def check_scored(art: ArtifactModel, what: str) -> None:
    """ExportError when what the task scores differs from PyTorch's by a relative error above SCORED_TOLERANCE
    in the median checked example (real tokens only)."""
    from slimformer.methods.export import ExportError

    if art.scored_rel_err > SCORED_TOLERANCE:
        raise ExportError(f"the artifact's {what} differs from the PyTorch model's by {art.scored_rel_err:.1%} of its "
                          f"length in the median example on real tokens (allowed {SCORED_TOLERANCE:.0%}; largest element difference "
                          f"{art.scored_diff:.3g}): not written")


def is_artifact(folder: Path) -> bool:
    """A folder whose manifest names an onnx/openvino artifact (not the pytorch safetensors layout)."""
    from slimformer.methods.export import MANIFEST

    try:
        return json.loads((folder / MANIFEST).read_text()).get("format") in ARTIFACT_FORMATS
    except (OSError, ValueError, AttributeError):
        return False


def open_artifact(folder: Path, threads: int) -> tuple[dict, ArtifactSession]:
    """(manifest, session) after checking every file against its sha256 (ExportError otherwise)."""
    from slimformer.methods.export import ExportError

    from .layout import runtime_files, verified_tree

    manifest, data = verified_tree(folder)
    fmt = manifest.get("format")
    model_files = manifest.get("model_files")
    if fmt not in ARTIFACT_FORMATS or not isinstance(model_files, list) or not set(model_files) <= set(data):
        raise ExportError(f"{folder}/manifest.json does not describe an onnx or openvino artifact")
    return manifest, load_artifact(fmt, runtime_files(manifest, data), threads)


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
    from slimformer.methods import get_adapter, model_size

    from .latency import device_facts

    size = model_size(model, plan.group_size)
    try:
        shape = get_adapter(bench.model).shape()
        base_config = {"num_layers": shape.num_layers, "num_heads": shape.num_heads,
                       "intermediate_size": shape.intermediate_size}
    except Exception:  # an architecture without an adapter: the card leaves the counts out
        base_config = {}
    pruned = any(plan.to_dict().get(k) is not None for k in ("layers", "heads", "ffn", "rank"))
    info = {"plan": plan.to_dict(), "trial": metrics, "params": size["params"], "simulated": size["simulated"],
            "task": bench.task.name, "model": bench.cfg.model.name, "base_config": {**base_config, "pruned": pruned},
            "timed_on": {**device_facts(bench.cfg.device.threads), "batch_size": bench.cfg.device.batch_size,
                         "seq_len": bench.cfg.device.seq_len},
            "runtime_versions": {n: r.version() for n, r in RUNTIMES.items() if r.version is not None}}
    if getattr(bench, "generate", None) is not None:  # a decoder (device.generate): the OpenVINO GenAI folder
        from .lm_export import export_lm

        export_lm(fmt, bench, model, plan, out, info, log=log)
        return
    write_artifact(fmt, bench, model, out, info, options, log=log)


def require_format(fmt: str) -> None:
    """UserError when the runtime that loads `fmt` is not installed (before any model is built)."""
    if fmt != "pytorch":
        runtime_of_format(fmt).require()


def evaluate_artifact(bench, folder: Path, rounds: int | None = None) -> dict:
    """Quality (full validation) and latency against the study's baseline of an artifact folder,
    loaded from its sha256-checked bytes; the keys of `Workbench.score`."""
    from slimformer.methods.export import MANIFEST

    from .lm_export import LM_LAYOUT, evaluate_lm_artifact

    if json.loads((folder / MANIFEST).read_text()).get("layout") == LM_LAYOUT:  # a decoder's GenAI folder
        return evaluate_lm_artifact(bench, folder, rounds)
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
    from slimformer.methods import plan_of
    from slimformer.methods.export import ExportError

    from .card import base_card_facts, render_card
    from .layout import base_normalizes, model_paths, seal, write_library_files

    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    task = bench.task.name
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        log(f"building the {fmt} artifact ...")
        with tempfile.TemporaryDirectory(prefix="slimformer-build-") as tmp:
            facts = build_artifact(fmt, model, bench.inputs, Path(tmp), {**bench.runtime_options(), **(options or {})})
            paths = model_paths(fmt, task, facts["files"])
            for name in facts["files"]:
                (stage / paths[name]).parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(Path(tmp) / name), stage / paths[name])
        session = load_artifact(fmt, {f: (stage / paths[f]).read_bytes() for f in facts["files"]},
                                bench.cfg.device.threads)
        log("verifying it: what the task scores against the PyTorch model (real tokens only), quality re-scored "
            "from the artifact ...")
        art = ArtifactModel(session, bench.model.config, reference=model, features=bench.task.scored_features())
        art(**bench.inputs)
        quality = bench.quality(art, full=True)
        quality["baseline_quality"] = bench.quality(bench.model, full=True)["quality"]  # for the card
        scored = SCORED_NAMES.get(task, "logits")
        check_scored(art, scored)
        real = ", ".join(f"{k} {v:.2e}" for k, v in art.max_abs_diff.items())
        log(f"max abs difference of the {scored} vs PyTorch (what {task} scores; padding left out): "
            f"{art.scored_diff:.2e} (largest value {art.scored_scale:.2f}; relative error {art.scored_rel_err:.1%} in "
            f"the median example, {max(art.scored_errors, default=0.0):.1%} at most); outputs on real tokens: {real}; "
            f"{quality['metric']} from the artifact {quality['quality']:.2f}")
        if bench.tokenizer is not None:
            bench.tokenizer.save_pretrained(str(stage))
        base_dir = getattr(bench.model.config, "name_or_path", None)
        library = write_library_files(stage, fmt, task, model, plan_of(model), bench.task.max_length,
                                      normalize=base_normalizes(base_dir))
        dims = {k: ["batch", "sequence"] if v.dim() == 2 else ["batch", *v.shape[1:]] for k, v in bench.inputs.items()}
        manifest = {
            "format": fmt, "format_version": ARTIFACT_VERSION, "model_files": [paths[f] for f in facts["files"]],
            "runtime_files": {f: paths[f] for f in facts["files"]}, "library_files": library,
            "inputs": {k: dims[k] for k in session.inputs}, "outputs": session.outputs,
            "dynamic_axes": True, "max_length": bench.task.max_length, "int8_layers": facts["int8_layers"], "int8_weights": facts["int8_weights"],
            "int8_scheme": facts.get("int8_scheme"),
            **({"compile_config": facts["compile_config"]} if facts.get("compile_config") else {}),
            "verification": {"max_abs_diff": art.max_abs_diff, "masked": True, "scored_output": scored,
                             "scored_max_abs_diff": art.scored_diff, "scored_scale": art.scored_scale,
                             "scored_relative_error": art.scored_rel_err,
                             "tolerance": SCORED_TOLERANCE, "checked_calls": min(art.calls, CHECK_CALLS),
                             **{k: v for k, v in quality.items()}, "split": "full validation"},
            **info,
        }
        seal(stage, out, manifest, render_card(manifest, base_card_facts(base_dir, bench.cfg.model.name)))
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return manifest
