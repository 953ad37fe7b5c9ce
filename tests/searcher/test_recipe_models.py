"""The shipped recipes (studies/recipes: the SST-2 teacher, ViT on digits, GPT-2 on SST-2), each
trained here in a tiny variant: the shipped file with a smaller model, a few steps and the
committed SST-2 slices in tests/data (the digits ship inside scikit-learn). So the shipped
file's task, tokenizer or image processor, data columns and frozen parameters are the ones
trained, in seconds, on a clone alone. The full-size models' scores are the README's recipe
table (trained by `python -m slimformer.searcher.problem.recipes NAME`, not by a test)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from slimformer.searcher.problem import recipes
from slimformer.searcher.problem.data import load_rows
from slimformer.searcher.problem.models import load_model, load_preprocessor
from slimformer.searcher.problem.tasks import get_task

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = Path(__file__).resolve().parents[1] / "data"  # SST-2 slices: source and licence in tests/data/README.md
SST2 = {"train": DATA / "sst2-train-1k.tsv", "validation": DATA / "sst2-dev-256.tsv"}


def tiny_variant(name: str, folder: Path, model=None, training=None, tokenizer=None, data=None) -> Path:
    """The shipped recipe `name` with these config / training / tokenizer values and data files
    replaced, written to folder (the name gets a `-tiny` suffix: its own cache entry)."""
    body = recipes.load_recipe(name).model_dump(mode="json")
    body["model"]["config"].update(model or {})
    body["training"].update({"threads": 1, "log_every": 1000, **(training or {})})
    body["tokenizer"].update(tokenizer or {})
    for split, path in (data or {}).items():
        body["data"][split]["path"] = str(path)
    out = folder / f"{name}-tiny.yaml"
    out.write_text(yaml.safe_dump(body, sort_keys=False))
    return out


def train_and_reload(path: Path, batch_size=64):
    """Train (cached under the test's SLIMFORMER_CACHE), then score the saved folder on the
    recipe's own validation split: the recorded score must be what the saved model scores."""
    folder = recipes.ensure_trained(str(path), log=lambda m: None)
    info = json.loads((folder / "training.json").read_text())
    recipe = recipes.load_recipe(str(path))
    task = get_task(recipe.task, load_preprocessor(str(folder), recipe.task), recipe.training.max_length, batch_size)
    v = recipe.data.validation
    rows = load_rows(recipe.resolve(v.path), recipe.task, fmt=v.format, header=v.header, names=v.names,
                     columns=v.columns, limit=v.limit)
    model, batches = load_model(str(folder), task.model_class), task.prepare(rows)
    q = task.quality(model, batches)
    assert q["quality"] == pytest.approx(info["validation_quality"], abs=1e-4), (q, info)
    return info, q, model, rows, lambda m: task.quality(m, batches)


def test_sst2_teacher(tmp_path):
    """all-MiniLM-L6-v2 + a new 2-class head, 40 steps on 1,000 SST-2 sentences: well above the
    majority class (52% of the 256 dev sentences) on sentences it never saw."""
    path = tiny_variant("minilm-sst2", tmp_path, training={"max_steps": 40, "batch_size": 16, "lr": 3e-4,
                                                           "max_length": 32}, data=SST2)
    info, q, model, rows, _ = train_and_reload(path)
    assert info["steps"] == 40 and info["metric"] == "accuracy" and len(rows["text"]) == 256
    assert model.config.num_labels == 2
    assert q["quality"] > 70.0, q
    untouched = load_model("minilm-l6").embeddings.word_embeddings.weight
    assert model.bert.embeddings.word_embeddings.weight.equal(untouched)  # the shipped recipe freezes them


def test_vit_digits(tmp_path):
    """A ViT (hidden 32, 2 layers) from scratch, 4 epochs of the fixed digits split: far above
    chance (10%) on the 360 validation images."""
    path = tiny_variant("vit-digits", tmp_path, model={"hidden_size": 32, "num_hidden_layers": 2,
                                                       "intermediate_size": 64},
                        training={"epochs": 4.0, "lr": 3e-3, "warmup": 0.05})
    info, q, model, rows, _ = train_and_reload(path, batch_size=120)
    assert info["steps"] == 4 * 45 and len(rows["label"]) == 360
    assert model.config.patch_size == 2 and model.config.num_labels == 10  # the shipped recipe's layout
    assert q["quality"] > 50.0, q


def test_gpt2_sst2(tmp_path):
    """GPT-2 (2 layers, hidden 64) and a byte-level BPE trained on 1,000 SST-2 sentences, 100
    steps: perplexity on 256 unseen dev sentences well below the untrained model's."""
    path = tiny_variant("gpt2-sst2", tmp_path, model={"n_embd": 64, "n_layer": 2, "n_inner": 128},
                        training={"max_steps": 100, "max_length": 32, "warmup": 0.1},
                        tokenizer={"bpe_vocab_size": 512}, data=SST2)
    info, q, model, _, score = train_and_reload(path)
    assert info["steps"] == 100 and model.config.vocab_size <= 512
    before = score(type(model)(model.config).eval())  # the same architecture, untrained
    assert math.isfinite(q["perplexity"]) and q["perplexity"] < before["perplexity"] / 2, (q, before)
