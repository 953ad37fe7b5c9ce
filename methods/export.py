"""Save and load compressed models: safetensors + JSON only (no pickle), with a sha256
manifest of every file that is checked on load.

A saved model is rebuilt from its ORIGINAL config and its plan (shapes only), then its
weights are loaded; int8 layers are stored as int8 values with per-channel scales.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from .plan import Plan
from .registry import CONFIG_KEY, apply_plan, plan_of
from .size import is_dynamic_int8

__all__ = ["save_compressed", "load_compressed", "ExportError", "FORMAT_VERSION", "MANIFEST", "sha256_file", "move_into",
           "read_manifest",
           "verified_files"]

FORMAT_VERSION = 1
WEIGHTS, META, MANIFEST = "model.safetensors", "slimformer.json", "manifest.json"


class ExportError(ValueError):
    """An export directory that cannot be written or trusted."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str], dict[str, str]]:
    quantized = [name for name, m in model.named_modules() if is_dynamic_int8(m)]
    tensors: dict[str, torch.Tensor] = {}
    for name in quantized:
        m = model.get_submodule(name)
        w, b = m.weight(), m.bias()
        tensors[f"{name}.weight_int8"] = w.int_repr().contiguous()
        tensors[f"{name}.weight_scale"] = w.q_per_channel_scales().float().contiguous()
        tensors[f"{name}.weight_zero_point"] = w.q_per_channel_zero_points().to(torch.int64).contiguous()
        if b is not None:
            tensors[f"{name}.bias"] = b.detach().contiguous()
    prefixes = tuple(f"{q}." for q in quantized)
    seen: dict[tuple, str] = {}
    aliases: dict[str, str] = {}
    for key, t in model.state_dict(keep_vars=False).items():
        if key.startswith(prefixes) or not torch.is_tensor(t):
            continue
        ident = (t.data_ptr(), t.shape, t.dtype)
        if t.numel() and ident in seen:
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        tensors[key] = t.detach().contiguous()
    return tensors, quantized, aliases


def save_compressed(model: nn.Module, plan: Plan | None, out_dir, tokenizer=None, metrics=None,
                    force: bool = False) -> Path:
    """Write the compressed `model` (built by `apply_plan`) to `out_dir`: safetensors + JSON,
    written in a private folder next to it and moved in complete."""
    stored = plan_of(model)
    if stored is None:
        raise ExportError("save_compressed needs a model built by apply_plan (it carries its plan)")
    if plan is not None and plan.to_dict() != stored.to_dict():
        shape_free = {k: v for k, v in plan.to_dict().items() if v is not None}
        if any(stored.to_dict()[k] != v for k, v in shape_free.items() if k not in ("layers", "heads", "ffn", "rank", "bits")):
            raise ExportError("the plan given does not match the plan the model was built with")
    out = Path(out_dir)
    if out.is_symlink():  # the user's link: write into the folder it points to
        out = out.resolve()
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"{out} is not empty; choose an empty directory or pass force")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        _write_export(model, stage, tokenizer, metrics)
        move_into(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out


def _write_export(model: nn.Module, stage: Path, tokenizer, metrics) -> None:
    """Write every file into a fresh private folder (no file there can be a planted symlink)."""
    from safetensors.torch import save_file

    tensors, quantized, aliases = _tensors(model)
    info = getattr(model.config, CONFIG_KEY)
    save_file(tensors, str(stage / WEIGHTS), metadata={"format": "slimformer", "version": str(FORMAT_VERSION)})
    meta = {
        "format_version": FORMAT_VERSION,
        "model_class": info["model_class"],
        "original_config": info["original_config"],
        "plan": info["plan"],
        "simulated": info["simulated"],
        "int8_modules": quantized,
        "aliases": aliases,
        "metrics": metrics or {},
        "torch": torch.__version__,
    }
    (stage / META).write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(stage))
    for p in stage.rglob("*"):
        if p.is_symlink() or not (p.is_file() and p.parent == stage):
            raise ExportError(f"the export would contain {p.relative_to(stage)}, which is not a plain file")
    files = sorted(p.name for p in stage.iterdir() if p.name != MANIFEST)
    manifest = {"format_version": FORMAT_VERSION, "files": {name: sha256_file(stage / name) for name in files}}
    (stage / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))


def move_into(stage: Path, out: Path) -> None:
    """An absent or empty `out` is replaced by the finished folder in one rename. Into a
    non-empty one (force), each file is renamed over its old entry (a symlink there is replaced,
    never followed), the old manifest is removed first and the new one moved in last, so an
    interrupted export is never mistaken for a complete one."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        os.replace(stage, out)
        return
    if (out / MANIFEST).is_symlink() or (out / MANIFEST).exists():
        (out / MANIFEST).unlink()
    for p in sorted(stage.iterdir()):
        if p.name == MANIFEST:
            continue
        target = out / p.name
        if target.is_dir() and not target.is_symlink():
            raise ExportError(f"{target} is a directory; cannot write the export's {p.name} there")
        os.replace(p, target)
    os.replace(stage / MANIFEST, out / MANIFEST)


def _plain_name(name) -> bool:
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and "\x00" not in name and not name.startswith("."))


def _verified(root: Path) -> dict[str, bytes]:
    return verified_files(root, (WEIGHTS, META))[1]


def read_manifest(root: Path) -> dict:
    """The manifest of the export folder `root` (its `files` a mapping of name -> sha256), written by a
    slimformer that is not newer than this one; ExportError otherwise. Its files are not checked here."""
    if not root.is_dir():
        raise ExportError(f"export directory not found: {root}")
    try:
        manifest = json.loads((root / MANIFEST).read_text())
        if not isinstance(manifest["files"], dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise ExportError(f"{root} has no readable {MANIFEST}: not a slimformer export, or damaged") from None
    version = manifest.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ExportError(f"{root} was written by a newer slimformer (format {version!r})")
    return manifest


def verified_files(root: Path, required: tuple[str, ...]) -> tuple[dict, dict[str, bytes]]:
    """(manifest, the bytes of every file it lists), each file checked against its sha256, and
    every `required` name listed. Only these bytes are used to load: files not listed are never read."""
    manifest = read_manifest(root)
    files = manifest["files"]
    for name in required:
        if name not in files:
            raise ExportError(f"{root}/{MANIFEST} does not list {name}")
    data = {}
    for name, digest in files.items():
        path = root / name if _plain_name(name) else None
        if path is None or path.is_symlink() or not path.is_file():
            raise ExportError(f"{root}: file {name!r} listed in the manifest is missing or not allowed "
                              "(only plain files in the folder itself)")
        raw = path.read_bytes()
        if hashlib.sha256(raw).hexdigest() != digest:
            raise ExportError(f"{root}: {name} does not match its sha256 in the manifest (corrupted or tampered)")
        data[name] = raw
    return manifest, data


def _verify(root: Path) -> dict:
    """The export's metadata, after checking every listed file."""
    return _meta(root, _verified(root))


def _meta(root: Path, data: dict[str, bytes]) -> dict:
    try:
        meta = json.loads(data[META])
        for key in ("model_class", "original_config", "plan", "int8_modules", "aliases"):
            meta[key]
    except (ValueError, KeyError, TypeError):
        raise ExportError(f"{root}/{META} is not a readable slimformer description") from None
    return meta


def load_compressed(out_dir):
    """-> (model, tokenizer or None, plan). Verifies every file against the manifest first and
    reads only the verified bytes (safetensors and JSON: no code is executed)."""
    import transformers

    root = Path(out_dir)
    data = _verified(root)
    meta = _meta(root, data)
    try:
        model, plan = _rebuild(root, meta, data)
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - a hand-edited export can fail in many ways
        raise ExportError(f"{root}: the export does not describe a model this slimformer can rebuild "
                          f"({type(exc).__name__}: {str(exc)[:200]})") from None
    tokenizer = None
    if "tokenizer.json" in data or "tokenizer_config.json" in data:
        with tempfile.TemporaryDirectory() as tmp:  # only the verified tokenizer files
            for name, raw in data.items():
                if name not in (WEIGHTS, META):
                    (Path(tmp) / name).write_bytes(raw)
            tokenizer = transformers.AutoTokenizer.from_pretrained(tmp)
    return model, tokenizer, plan


def _rebuild(root: Path, meta: dict, data: dict[str, bytes]):
    import transformers
    from safetensors.torch import load as load_safetensors

    cls_name = meta["model_class"]
    cls = getattr(transformers, cls_name, None) if isinstance(cls_name, str) and cls_name.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise ExportError(f"{root}: unknown model class {cls_name!r}")
    cfg_dict = dict(meta["original_config"]) if isinstance(meta["original_config"], dict) else {}
    model_type = cfg_dict.get("model_type")
    if model_type not in transformers.CONFIG_MAPPING:
        raise ExportError(f"{root}: unknown model type {model_type!r}")
    config = transformers.CONFIG_MAPPING[model_type].from_dict(cfg_dict)
    try:
        plan = Plan.from_dict(meta["plan"])
    except ValueError as exc:
        raise ExportError(f"{root}: invalid plan in {META}: {exc}") from None
    base = cls(config)
    model = apply_plan(base, plan, structure_only=True)
    del base
    try:
        tensors = load_safetensors(data[WEIGHTS])
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise ExportError(f"{root}: {WEIGHTS} is not a readable safetensors file: {exc}") from None
    for name in meta["int8_modules"]:
        m = model.get_submodule(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = torch._make_per_channel_quantized_tensor(
                tensors.pop(f"{name}.weight_int8"), tensors.pop(f"{name}.weight_scale").double(),
                tensors.pop(f"{name}.weight_zero_point"), 0)
        m.set_weight_bias(q, tensors.pop(f"{name}.bias", None))
    prefixes = tuple(f"{q}." for q in meta["int8_modules"])
    expected = {k: v for k, v in model.state_dict(keep_vars=True).items()
                if torch.is_tensor(v) and not k.startswith(prefixes)}
    missing = [k for k in expected if k not in tensors and k not in meta["aliases"]]
    unexpected = [k for k in tensors if k not in expected]
    wrong = [k for k, t in tensors.items() if k in expected and expected[k].shape != t.shape]
    if missing or unexpected or wrong:
        raise ExportError(f"{root}: weights do not match the plan (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}, wrong shape {wrong[:3]})")
    with torch.no_grad():
        for key, t in tensors.items():
            expected[key].copy_(t)
    model.eval()
    return model, plan
