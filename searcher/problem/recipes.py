"""Training recipes: small models trained here, on local data, once, and cached.

A recipe is a YAML file of plain data (the architecture, the data, the training schedule);
`studies/recipes/<name>.yaml` ships with the project and a study names it as
`model: recipe:<name>` (or `recipe:path/to/file.yaml`). The first use trains the model and
saves it as an ordinary Hugging Face model folder (safetensors, config, tokenizer or image
processor, plus `training.json` with the validation score and training time) under
`$SLIMFORMER_CACHE/recipes/<name>-<hash>/` (default cache: ~/.cache/slimformer); later uses load
that folder. The hash covers the recipe, the bytes of its data files and RECIPE_CODE_VERSION,
so any change to one of them trains again. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..config import TASKS, format_error
from ..errors import UserError
from .cachedir import build_once
from .models import load_tokenizer, resolve_model_path

__all__ = ["Recipe", "load_recipe", "recipe_path", "ensure_trained", "cache_root", "RECIPE_CODE_VERSION",
           "RECIPES_DIR", "model_source"]

# bump when the training code changes what a recipe produces (every cached model retrains)
RECIPE_CODE_VERSION = 1


def _shipped_recipes() -> Path:
    """studies/recipes/, which a wheel installs as the data package `slimformer.recipes`."""
    spec = importlib.util.find_spec("slimformer.recipes")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parents[2] / "studies" / "recipes"  # an editable install from before the mapping


RECIPES_DIR = _shipped_recipes()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitSource(_Section):
    """One data split: a file (read like a study's data) or a built-in source such as sklearn:digits:train."""

    path: str
    format: str | None = None
    header: bool = True
    names: list[str] | None = None
    columns: dict[str, str] = Field(default_factory=dict)
    limit: int | None = Field(None, ge=1, description="a fixed random subset of this many rows")


class RecipeData(_Section):
    train: SplitSource
    validation: SplitSource


class RecipeModel(_Section):
    init: str | None = Field(None, description="start from these weights (alias or folder); none: from scratch")
    type: str | None = Field(None, description="transformers model_type when training from scratch (vit, gpt2)")
    config: dict[str, Any] = Field(default_factory=dict, description="config values (all of them from scratch)")
    freeze: list[str] = Field(default_factory=list, description="parameters whose name contains one of these stay fixed")


class RecipeTokenizer(_Section):
    copy_from: str | None = Field(None, description="use this model's tokenizer (alias or folder)")
    bpe_vocab_size: int | None = Field(None, ge=260, description="train a byte-level BPE on the training texts")
    image_processor: dict[str, Any] | None = Field(None, description="ViTImageProcessor settings")


class Training(_Section):
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup: float = Field(0.06, ge=0, lt=1, description="fraction of steps with a linear warmup")
    max_length: int = Field(128, ge=4)
    seed: int = 0
    threads: int | None = Field(None, ge=1, description="torch threads; default: leave as is")
    log_every: int = Field(50, ge=1)


class Recipe(_Section):
    task: Literal[TASKS]
    model: RecipeModel
    tokenizer: RecipeTokenizer = RecipeTokenizer()
    data: RecipeData
    training: Training = Training()
    description: str = ""
    name: str = Field("recipe", exclude=True)
    path: Path | None = Field(None, exclude=True)

    def resolve(self, value: str) -> str:
        """A data path relative to the recipe file; built-in sources (sklearn:...) unchanged."""
        if ":" in value.split("/")[0]:
            return value
        p = Path(value).expanduser()
        if not p.is_absolute() and self.path is not None:
            p = self.path.parent / p
        return str(p)


def cache_root() -> Path:
    root = os.environ.get("SLIMFORMER_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "slimformer"


def recipe_path(spec: str) -> Path:
    """`vit-digits` -> studies/recipes/vit-digits.yaml; a path ending in .yaml/.yml is used as given."""
    if spec.endswith((".yaml", ".yml")) or os.sep in spec:
        p = Path(spec).expanduser()
        if not p.is_file():
            raise UserError(f"recipe file not found: {p}")
        return p.resolve()
    p = RECIPES_DIR / f"{spec}.yaml"
    if not p.is_file():
        known = sorted(q.stem for q in RECIPES_DIR.glob("*.yaml")) if RECIPES_DIR.is_dir() else []
        raise UserError(f"unknown recipe {spec!r}; known: {', '.join(known) or 'none'} (or give a path to a .yaml)")
    return p


def load_recipe(spec: str) -> Recipe:
    path = recipe_path(spec)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: malformed YAML: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe must be a mapping")
    try:
        return Recipe(**data, name=path.stem, path=path)
    except ValidationError as exc:
        raise UserError(f"{path}: {format_error(exc, Recipe)}") from None


def _file_digest(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        return "source:" + path  # built-in sources are identified by name
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def recipe_hash(recipe: Recipe) -> str:
    body = recipe.model_dump(mode="json")
    body.pop("description", None)
    body["data_digests"] = {split: _file_digest(recipe.resolve(getattr(recipe.data, split).path))
                            for split in ("train", "validation")}
    body["code_version"] = RECIPE_CODE_VERSION
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]


def cached_dir(recipe: Recipe) -> Path:
    return cache_root() / "recipes" / f"{recipe.name}-{recipe_hash(recipe)}"


def ensure_trained(spec: str, log=None) -> Path:
    """The cached model folder of a recipe, training it first if it is not there."""
    recipe = load_recipe(spec)
    out = cached_dir(recipe)
    if (out / "training.json").is_file():
        return out
    log = log or _stderr
    log(f"recipe {recipe.name}: no cached model at {out}; training it once (cached afterwards) ...")
    result = build_once(out, lambda tmp: train(recipe, tmp, log))
    log(f"recipe {recipe.name}: {result['metric']} {result['validation_quality']:.2f} on validation "
        f"after {result['steps']} steps ({result['train_seconds']:.0f} s); cached at {out}")
    return out


def _stderr(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr, flush=True)


# ----- building the pieces --------------------------------------------------------------------

def _texts_for_bpe(recipe: Recipe) -> list[str]:
    from .data import load_rows

    s = recipe.data.train
    rows = load_rows(Path(recipe.resolve(s.path)), recipe.task, fmt=s.format, header=s.header, names=s.names,
                     columns=s.columns, limit=s.limit)
    return [str(t) for t in rows["text"]]


def _build_tokenizer(recipe: Recipe):
    t = recipe.tokenizer
    if t.image_processor is not None:
        import transformers

        # the PIL backend is what ViTImageProcessor falls back to without torchvision; naming it avoids a warning
        cls = getattr(transformers, "ViTImageProcessorPil", None) or transformers.ViTImageProcessor
        return cls(**{"do_resize": False, **t.image_processor})
    if t.copy_from is not None:
        return load_tokenizer(t.copy_from)
    if t.bpe_vocab_size is not None:
        return _train_bpe(_texts_for_bpe(recipe), t.bpe_vocab_size)
    if recipe.model.init is not None:
        return load_tokenizer(recipe.model.init)
    raise UserError(f"recipe {recipe.name}: say how to get a tokenizer (tokenizer.copy_from, "
                    "tokenizer.bpe_vocab_size or tokenizer.image_processor)")


def _train_bpe(texts: list[str], vocab_size: int):
    """A byte-level BPE (GPT-2 style) trained on the texts; <|endoftext|> is BOS, EOS and pad,
    and every text starts with it, so the first word is predicted too."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    special = "<|endoftext|>"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[special], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"{special} $A", special_tokens=[(special, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=special, eos_token=special, pad_token=special,
                                   padding_side="right")


def _build_model(recipe: Recipe, model_class: str, tokenizer):
    import transformers

    cls = getattr(transformers, model_class)
    m = recipe.model
    config = dict(m.config)
    if m.init is not None:
        transformers.logging.set_verbosity_error()  # "newly initialized head" is the point here
        return cls.from_pretrained(resolve_model_path(m.init), **config)
    if m.type is None:
        raise UserError(f"recipe {recipe.name}: model.type (e.g. vit, gpt2) is needed to train from scratch")
    vocab = getattr(tokenizer, "vocab_size", None)
    if vocab is not None and "vocab_size" not in config:
        config["vocab_size"] = len(tokenizer)
    if getattr(tokenizer, "bos_token_id", None) is not None:
        config.setdefault("bos_token_id", tokenizer.bos_token_id)
        config.setdefault("eos_token_id", tokenizer.eos_token_id)
        config.setdefault("pad_token_id", tokenizer.pad_token_id)
    try:
        cfg = transformers.AutoConfig.for_model(m.type, **config)
    except (ValueError, TypeError) as exc:
        raise UserError(f"recipe {recipe.name}: bad model config: {str(exc).splitlines()[0]}") from None
    return cls.from_config(cfg)


def _rows(recipe: Recipe, split: str):
    from .data import load_rows

    s: SplitSource = getattr(recipe.data, split)
    return load_rows(recipe.resolve(s.path), recipe.task, fmt=s.format, header=s.header, names=s.names,
                     columns=s.columns, limit=s.limit)


# ----- training -------------------------------------------------------------------------------

def train(recipe: Recipe, out: Path, log) -> dict:
    """Train the recipe's model and save it (with its tokenizer/processor and training.json) to out."""
    import torch

    from .tasks import get_task

    tr = recipe.training
    if tr.threads:
        torch.set_num_threads(tr.threads)
    random.seed(tr.seed)
    torch.manual_seed(tr.seed)
    tokenizer = _build_tokenizer(recipe)
    task = get_task(recipe.task, tokenizer, tr.max_length, tr.batch_size)
    model = _build_model(recipe, task.model_class, tokenizer)
    train_batches = task.prepare(_rows(recipe, "train"))
    val_batches = task.prepare(_rows(recipe, "validation"))
    per_epoch = len(train_batches)
    steps = tr.max_steps or max(1, math.ceil(tr.epochs * per_epoch))
    warm = int(tr.warmup * steps)

    for n, p in model.named_parameters():
        if any(f in n for f in recipe.model.freeze):
            p.requires_grad_(False)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in params if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in params if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tr.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=tr.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / max(1, warm) if s < warm else max(0.0, (steps - s) / max(1, steps - warm)))
    rng = random.Random(tr.seed)
    order: list[int] = []
    model.train()
    t0, running = time.perf_counter(), 0.0
    log(f"recipe {recipe.name}: {steps} steps of batch {tr.batch_size} ({per_epoch} batches per epoch, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, {torch.get_num_threads()} threads)")
    for step in range(steps):
        if not order:
            order = list(range(per_epoch))
            rng.shuffle(order)  # length-sorted batches, visited in random order
        loss = model(**train_batches[order.pop()]).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
        opt.step()
        sched.step()
        running += loss.item()
        if (step + 1) % tr.log_every == 0 or step + 1 == steps:
            n = (step % tr.log_every) + 1
            el = time.perf_counter() - t0
            log(f"recipe {recipe.name}: step {step + 1}/{steps} loss {running / n:.4f} "
                f"({el:.0f} s, about {el / (step + 1) * (steps - step - 1):.0f} s left)")
            running = 0.0
    train_seconds = time.perf_counter() - t0
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    with torch.inference_mode():
        q = task.quality(model, val_batches)
    result = {"recipe": recipe.name, "hash": recipe_hash(recipe), "code_version": RECIPE_CODE_VERSION,
              "task": recipe.task, "metric": q["metric"], "validation_quality": q["quality"],
              "validation": {k: v for k, v in q.items() if k != "metric"}, "steps": steps,
              "epochs": steps / per_epoch, "train_seconds": round(train_seconds, 1),
              "threads": torch.get_num_threads(), "recipe_file": str(recipe.path)}
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "recipe.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    (out / "training.json").write_text(json.dumps(result, indent=2))
    return result


def model_source(spec: str) -> Path:
    """The folder of `model: recipe:<spec>` (registered in `searcher.problem`'s __init__)."""
    if not spec:
        raise UserError("model 'recipe:' needs a recipe name or file, e.g. recipe:vit-digits")
    return ensure_trained(spec)


def main(argv: list[str] | None = None) -> int:
    """`python -m slimformer.searcher.problem.recipes NAME_OR_FILE...`: train (or find) each recipe's model
    and print its folder and validation score."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m slimformer.searcher.problem.recipes", description=main.__doc__)
    p.add_argument("recipes", nargs="+", metavar="RECIPE", help="recipe name (studies/recipes/) or .yaml path")
    args = p.parse_args(argv)
    try:
        for spec in args.recipes:
            out = ensure_trained(spec)
            info = json.loads((out / "training.json").read_text())
            print(f"{info['recipe']}: {info['metric']} {info['validation_quality']:.2f} "
                  f"({info['train_seconds']:.0f} s training) -> {out}")
    except UserError as exc:
        print(f"slimformer: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
