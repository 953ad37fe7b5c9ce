"""Where an artifact's files lie so that the user's library opens the export folder as it is.

- sentence similarity: a sentence-transformers folder. `modules.json` (Transformer, then mean Pooling
  over real tokens as the study scores, then Normalize when the base model had one: cosine scores
  are the same with or without it), `sentence_bert_config.json` (max_seq_length: the study's
  truncation), `config_sentence_transformers.json` (cosine similarity), `1_Pooling/config.json`,
  the tokenizer and `config.json`; the ONNX graph at `onnx/model.onnx`, the OpenVINO IR at
  `openvino/openvino_model.xml` + `.bin`: the paths `SentenceTransformer(path, backend="onnx" |
  "openvino")` looks in (sentence_transformers/backend/utils.py `backend_should_export`), and ones
  Optimum's ORTModel finds by itself (it searches the folder for model.onnx).
- any other task: the Optimum layout, `model.onnx` or `openvino_model.xml` + `.bin` beside
  `config.json` and the tokenizer, which `ORTModelForSequenceClassification.from_pretrained(path)`
  and `OVModelForSequenceClassification.from_pretrained(path)` open without arguments.

`config.json` is the base model's configuration with the number of layers the candidate keeps and
a `slimformer` entry that says what was pruned: per-layer head counts and FFN widths cannot be
written in a Hugging Face config, so the entry says so (`per_layer_shapes_in_config: false`) and
that only the graph carries them. The folder holds no PyTorch weights, so a library asked to
build the PyTorch model from it fails instead of building the unpruned shape.

The manifest lists files by their path in the folder (`onnx/model.onnx`); `verified_tree` checks
every one against its sha256 and refuses links and paths that leave the folder; `runtime_files`
maps them back to the names a runtime's `load` reads (model.onnx; model.xml, model.bin).

Imports: errors, methods (public names).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

__all__ = ["SENTENCE_TASK", "model_paths", "runtime_files", "write_library_files", "verified_tree", "move_tree", "seal",
           "honest_config", "tree_files", "load_lines"]

SENTENCE_TASK = "sentence-similarity"
# the runtime's file name (what its build writes and its load reads) -> where it lies in the export
_PATHS = {
    (True, "onnx"): {"model.onnx": "onnx/model.onnx"},
    (True, "openvino"): {"model.xml": "openvino/openvino_model.xml", "model.bin": "openvino/openvino_model.bin"},
    (False, "onnx"): {"model.onnx": "model.onnx"},
    (False, "openvino"): {"model.xml": "openvino_model.xml", "model.bin": "openvino_model.bin"},
}
POOLING_DIR = "1_Pooling"
NORMALIZE_DIR = "2_Normalize"
CONFIG_NOTE = ("slimformer compressed this model: the layers, attention heads and FFN widths it keeps are in "
               "`plan`; num_hidden_layers says how many layers are kept, but per-layer head counts and FFN "
               "widths cannot be written in this config, so only the ONNX/OpenVINO graph carries the real "
               "shapes. The folder holds no PyTorch weights: building the model from this config alone "
               "would give the unpruned shape, not this model.")


def model_paths(fmt: str, task: str, names: list[str]) -> dict[str, str]:
    """{runtime file name: path in the export} for the files a runtime's build wrote; a file the
    table does not know (a runtime's own settings file) lies beside the model file."""
    sentence = task == SENTENCE_TASK
    known = _PATHS[(sentence, fmt)]
    folder = f"{fmt}/" if sentence else ""
    return {name: known.get(name, folder + name) for name in names}


def runtime_files(manifest: dict, data: dict[str, bytes]) -> dict[str, bytes]:
    """The bytes a runtime's `load` reads, by its own file names; exports written before the library
    layout (no `runtime_files` in the manifest) list them under those names already."""
    names = manifest.get("runtime_files") or {f: f for f in manifest.get("model_files", [])}
    return {name: data[path] for name, path in names.items()}


def honest_config(model, plan) -> dict:
    """The base model's config.json as it describes this candidate (see the module docstring)."""
    from slimformer.methods import get_adapter

    config = model.config.to_dict()
    info = config.pop("slimformer", None) or {}
    base = dict(info.get("original_config") or config)
    base.pop("slimformer", None)
    plan_dict = plan.to_dict() if plan is not None else {}
    pruned = any(plan_dict.get(k) is not None for k in ("layers", "heads", "ffn", "rank"))
    try:
        layers_key = get_adapter(model).cfg_layers
    except Exception:  # an architecture without an adapter: the config keeps its own count
        layers_key = None
    if plan_dict.get("layers") is not None and layers_key in base:
        base[layers_key] = len(plan_dict["layers"])
    base["slimformer"] = {"compressed": plan is not None, "pruned": pruned, "per_layer_shapes_in_config": not pruned,
                          "note": CONFIG_NOTE if pruned else "slimformer compressed this model; its shapes are the "
                          "base model's (no pruning). The folder holds no PyTorch weights.",
                          "plan": plan_dict}
    return base


def _st_version() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist, key in (("sentence-transformers", "sentence_transformers"), ("transformers", "transformers"),
                      ("torch", "pytorch")):
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def base_normalizes(base_dir: str | None) -> bool:
    """Whether the base model's own sentence-transformers folder ends in a Normalize module."""
    try:
        modules = json.loads((Path(base_dir) / "modules.json").read_text())
        return any(str(m.get("type", "")).endswith("Normalize") for m in modules)
    except (OSError, ValueError, TypeError, AttributeError):
        return False


def write_library_files(stage: Path, fmt: str, task: str, model, plan, max_length: int, normalize: bool) -> list[str]:
    """config.json and, for sentence similarity, the sentence-transformers module files; returns their paths."""
    written = {"config.json": honest_config(model, plan)}
    written["config.json"]["slimformer"]["max_length"] = max_length  # the truncation the study scored with
    if task == SENTENCE_TASK:
        width = int(written["config.json"].get("hidden_size") or 0)
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": POOLING_DIR, "type": "sentence_transformers.models.Pooling"}]
        if normalize:
            modules.append({"idx": 2, "name": "2", "path": NORMALIZE_DIR, "type": "sentence_transformers.models.Normalize"})
        written["modules.json"] = modules
        written["sentence_bert_config.json"] = {"max_seq_length": max_length, "do_lower_case": False}
        written["config_sentence_transformers.json"] = {"__version__": _st_version(), "prompts": {},
                                                        "default_prompt_name": None, "similarity_fn_name": "cosine"}
        written[f"{POOLING_DIR}/config.json"] = {
            "word_embedding_dimension": width, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": False, "include_prompt": True}
    for rel, content in written.items():
        path = stage / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=2, sort_keys=False) + "\n")
    if task == SENTENCE_TASK and normalize:
        (stage / NORMALIZE_DIR).mkdir(exist_ok=True)  # Normalize has no config; ST only needs the folder
    return list(written)


def load_lines(fmt: str, task: str, threads: int | None = None, compile_config: dict | None = None,
               max_length: int | None = None) -> list[str]:
    """The lines that load the export in the user's library (for the card and docs/export.md); a
    classifier's tokenizer call truncates at `max_length`, the length the study scored with."""
    if task == SENTENCE_TASK:
        kwargs = ""
        if fmt == "openvino" and compile_config:
            ov = {**compile_config, **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
            kwargs = f", model_kwargs={{\"ov_config\": {json.dumps(ov)}}}"
        return ["from sentence_transformers import SentenceTransformer",
                f"model = SentenceTransformer(\"PATH\", backend=\"{fmt}\"{kwargs})",
                "embeddings = model.encode([\"first sentence\", \"second sentence\"])"]
    cls = "ORTModelForSequenceClassification" if fmt == "onnx" else "OVModelForSequenceClassification"
    module = "optimum.onnxruntime" if fmt == "onnx" else "optimum.intel"
    kwargs = ""
    if fmt == "openvino" and compile_config:
        kwargs = f", ov_config={json.dumps({**compile_config, **({'INFERENCE_NUM_THREADS': threads} if threads else {})})}"
    return [f"from {module} import {cls}; from transformers import AutoTokenizer",
            f"model, tok = {cls}.from_pretrained(\"PATH\"{kwargs}), AutoTokenizer.from_pretrained(\"PATH\")",
            "logits = model(**tok([\"a sentence to classify\"], "
            + (f"truncation=True, max_length={max_length}, " if max_length else "") + "return_tensors=\"pt\")).logits"]


def _plain_part(part: str) -> bool:
    return part not in ("", ".", "..") and "\\" not in part and "\x00" not in part and not part.startswith(".")


def tree_files(root: Path) -> list[str]:
    """Every plain file under `root` by its relative path ('/'-separated); ExportError on a link."""
    from slimformer.methods.export import ExportError

    out = []
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            raise ExportError(f"the export would contain {p.relative_to(root)}, which is a link")
        if p.is_file():
            out.append(p.relative_to(root).as_posix())
    return out


def verified_tree(root: Path) -> tuple[dict, dict[str, bytes]]:
    """(manifest, the bytes of every file it lists), each checked against its sha256. A listed path
    may name a subfolder (onnx/model.onnx) but never a link, an absolute path or '..'."""
    from slimformer.methods.export import ExportError, read_manifest

    manifest = read_manifest(root)
    data = {}
    for name, digest in manifest["files"].items():
        parts = name.split("/") if isinstance(name, str) else []
        path = root.joinpath(*parts) if parts and all(_plain_part(p) for p in parts) else None
        steps = [root.joinpath(*parts[:i]) for i in range(1, len(parts) + 1)] if path is not None else []
        if path is None or any(s.is_symlink() for s in steps) or not path.is_file():
            raise ExportError(f"{root}: file {name!r} listed in the manifest is missing or not allowed "
                              "(only plain files inside the folder)")
        raw = path.read_bytes()
        if hashlib.sha256(raw).hexdigest() != digest:
            raise ExportError(f"{root}: {name} does not match its sha256 in the manifest (corrupted or tampered)")
        data[name] = raw
    return manifest, data


def move_tree(stage: Path, out: Path) -> None:
    """`methods.export.move_into` for a folder with subfolders: an absent or empty `out` is replaced in
    one rename; into a non-empty one (force) the old manifest goes first, each top-level entry is
    replaced (an old subfolder of the same name removed, a link there replaced, never followed) and
    the new manifest comes last."""
    from slimformer.methods.export import MANIFEST

    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        os.replace(stage, out)
        return
    if (out / MANIFEST).is_symlink() or (out / MANIFEST).exists():
        (out / MANIFEST).unlink()
    for p in sorted(stage.iterdir()):
        if p.name == MANIFEST:
            continue
        target = out / p.name
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        os.replace(p, target)
    os.replace(stage / MANIFEST, out / MANIFEST)


def seal(stage: Path, out: Path, manifest: dict, card: str) -> None:
    """Finish a staged export: the model card as README.md, the sha256 of every file in the manifest,
    manifest.json written last, then the folder moved into `out` (`move_tree`)."""
    import json

    from slimformer.methods.export import MANIFEST, sha256_file

    (stage / "README.md").write_text(card)
    manifest["files"] = {name: sha256_file(stage / name) for name in tree_files(stage)}
    (stage / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str))
    move_tree(stage, out)
