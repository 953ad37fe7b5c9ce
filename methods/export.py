"""Save and load compressed models: safetensors + JSON only (no pickle), with a sha256
manifest of every file that is checked on load.

A saved model is rebuilt from its ORIGINAL config and its plan (shapes only), then its
weights are loaded; int8 layers are stored as int8 values with per-channel scales.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .plan import Plan
from .registry import CONFIG_KEY, apply_plan, plan_of
from .size import _dynamic_int8

__all__ = ["save_compressed", "load_compressed", "ExportError", "FORMAT_VERSION"]

FORMAT_VERSION = 1
WEIGHTS, META, MANIFEST = "model.safetensors", "slimformer.json", "manifest.json"


class ExportError(ValueError):
    """An export directory that cannot be written or trusted."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str], dict[str, str]]:
    quantized = [name for name, m in model.named_modules() if _dynamic_int8(m)]
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
    """Write the compressed `model` (built by `apply_plan`) to `out_dir`."""
    from safetensors.torch import save_file

    stored = plan_of(model)
    if stored is None:
        raise ExportError("save_compressed needs a model built by apply_plan (it carries its plan)")
    if plan is not None and plan.to_dict() != stored.to_dict():
        shape_free = {k: v for k, v in plan.to_dict().items() if v is not None}
        if any(stored.to_dict()[k] != v for k, v in shape_free.items() if k not in ("layers", "heads", "ffn", "rank", "bits")):
            raise ExportError("the plan given does not match the plan the model was built with")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"{out} is not empty; choose an empty directory or pass force")
    out.mkdir(parents=True, exist_ok=True)
    tensors, quantized, aliases = _tensors(model)
    info = getattr(model.config, CONFIG_KEY)
    save_file(tensors, str(out / WEIGHTS), metadata={"format": "slimformer", "version": str(FORMAT_VERSION)})
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
    (out / META).write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    files = sorted(p.name for p in out.iterdir() if p.is_file() and p.name != MANIFEST)
    manifest = {"format_version": FORMAT_VERSION, "files": {name: _sha256(out / name) for name in files}}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return out


def _verify(root: Path) -> dict:
    if not root.is_dir():
        raise ExportError(f"export directory not found: {root}")
    try:
        manifest = json.loads((root / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ExportError(f"{root} has no readable {MANIFEST}: not a slimformer export, or damaged") from None
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ExportError(f"{root} was written by a newer slimformer (format {manifest['format_version']})")
    for name in (WEIGHTS, META):
        if name not in files:
            raise ExportError(f"{root}/{MANIFEST} does not list {name}")
    for name, digest in files.items():
        path = root / name
        if os.sep in name or name.startswith(".") or not path.is_file():
            raise ExportError(f"{root}: file {name!r} listed in the manifest is missing or not allowed")
        if _sha256(path) != digest:
            raise ExportError(f"{root}: {name} does not match its sha256 in the manifest (corrupted or tampered)")
    return json.loads((root / META).read_text())


def load_compressed(out_dir):
    """-> (model, tokenizer or None, plan). Verifies every file against the manifest first."""
    import transformers
    from safetensors.torch import load_file

    root = Path(out_dir)
    meta = _verify(root)
    cls_name = meta["model_class"]
    cls = getattr(transformers, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise ExportError(f"{root}: unknown model class {cls_name!r}")
    cfg_dict = dict(meta["original_config"])
    model_type = cfg_dict.get("model_type")
    if model_type not in transformers.CONFIG_MAPPING:
        raise ExportError(f"{root}: unknown model type {model_type!r}")
    config = transformers.CONFIG_MAPPING[model_type].from_dict(cfg_dict)
    plan = Plan.from_dict(meta["plan"])
    base = cls(config)
    model = apply_plan(base, plan, structure_only=True)
    del base
    tensors = load_file(str(root / WEIGHTS))
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
    tokenizer = None
    if (root / "tokenizer.json").is_file() or (root / "tokenizer_config.json").is_file():
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(root))
    return model, tokenizer, plan
