"""Recipes (train once, cache, reuse, retrain on change) and the causal-lm and
image-classification tasks, on tiny models trained in a few steps."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from slimformer.searcher.errors import UserError
from slimformer.searcher.problem import recipes
from slimformer.searcher.problem.data import load_rows
from slimformer.searcher.problem.models import load_model, load_preprocessor, resolve_model_path
from slimformer.searcher.problem.tasks import get_task

pytestmark = pytest.mark.usefixtures("one_thread")

PIXELS = {"do_rescale": True, "rescale_factor": 0.0625, "do_normalize": True, "image_mean": [0.5], "image_std": [0.5]}


def vit_recipe(folder, name="tiny-vit", **training):
    recipe = {
        "task": "image-classification",
        "model": {"type": "vit", "config": {"image_size": 8, "patch_size": 4, "num_channels": 1, "hidden_size": 16,
                                           "num_hidden_layers": 2, "num_attention_heads": 2,
                                           "intermediate_size": 32, "num_labels": 10}},
        "tokenizer": {"image_processor": PIXELS},
        "data": {"train": {"path": "sklearn:digits:train", "limit": 64},
                 "validation": {"path": "sklearn:digits:validation", "limit": 64}},
        "training": {"max_steps": 3, "batch_size": 16, "lr": 1e-3, "log_every": 1, **training},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


SENTENCES = [f"the {a} {v} the {b} ." for a in ("cat", "dog", "bird", "fox") for v in ("sees", "likes", "chases")
             for b in ("ball", "mat", "tree", "car")]


def lm_recipe(folder, steps=60):
    data = folder / "lm.tsv"
    data.write_text("label\ttext\n" + "".join(f"0\t{s}\n" for s in SENTENCES))
    recipe = {
        "task": "causal-lm",
        "model": {"type": "gpt2", "config": {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_inner": 64, "n_positions": 32}},
        "tokenizer": {"bpe_vocab_size": 300},
        "data": {"train": {"path": "lm.tsv"}, "validation": {"path": "lm.tsv"}},
        "training": {"max_steps": steps, "batch_size": 16, "lr": 3e-3, "warmup": 0.1, "max_length": 16,
                     "log_every": 100},
    }
    path = folder / "tiny-lm.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_recipe_trains_once_reuses_and_retrains_on_change(tmp_path, monkeypatch):
    path = vit_recipe(tmp_path)
    calls = []
    real_train = recipes.train
    monkeypatch.setattr(recipes, "train", lambda *a: calls.append(1) or real_train(*a))
    first = recipes.ensure_trained(str(path), log=lambda m: None)
    assert calls == [1]
    assert (first / "model.safetensors").is_file() and (first / "preprocessor_config.json").is_file()
    info = json.loads((first / "training.json").read_text())
    assert info["steps"] == 3 and 0 <= info["validation_quality"] <= 100 and info["metric"] == "accuracy"
    assert str(first).startswith(str(recipes.cache_root()))

    again = resolve_model_path(f"recipe:{path}")  # what a study's `model: recipe:...` does
    assert again == str(first) and calls == [1]

    vit_recipe(tmp_path, lr=2e-3)  # a changed recipe is a different model
    changed = recipes.ensure_trained(str(path), log=lambda m: None)
    assert changed != first and calls == [1, 1]
    model = load_model(f"recipe:{path}", "AutoModelForImageClassification")
    assert model.config.model_type == "vit" and model.config.num_labels == 10


def test_causal_lm_perplexity_drops_with_training(tmp_path):
    path = lm_recipe(tmp_path)
    folder = recipes.ensure_trained(str(path), log=lambda m: None)
    tok = load_preprocessor(str(folder), "causal-lm")
    task = get_task("causal-lm", tok, max_length=16, batch_size=8)
    batches = task.prepare({"text": SENTENCES})
    trained = load_model(str(folder), task.model_class)
    untrained = type(trained)(trained.config).eval()
    q_trained, q_untrained = task.quality(trained, batches), task.quality(untrained, batches)
    for q in (q_trained, q_untrained):
        assert math.isfinite(q["perplexity"]) and q["perplexity"] >= 1 and q["quality"] == -q["perplexity"]
    assert q_trained["perplexity"] < q_untrained["perplexity"] / 3
    # the quality is the recipe's recorded validation score (same data, same code)
    info = json.loads((folder / "training.json").read_text())
    assert info["validation"]["perplexity"] == pytest.approx(q_trained["perplexity"], rel=1e-4)

    calib = task.calibration(batches[:2])
    loss = calib.loss_fn(trained, calib.batches[0])
    assert loss.ndim == 0 and math.isfinite(loss.item())
    assert "labels" not in calib.model_inputs(calib.batches[0])[0]
    inputs = task.example_inputs(trained, batch_size=2, seq_len=12)
    assert inputs["input_ids"].shape == (2, 12)
    with pytest.raises(UserError, match="positions"):
        task.example_inputs(trained, batch_size=1, seq_len=64)


def test_causal_lm_fisher_and_pruning_run(tmp_path, tiny_models):
    from slimformer.methods.adapters import get_adapter
    from slimformer.methods.importance import importance_scores
    from slimformer.searcher.problem.models import load_tokenizer

    tok = load_tokenizer("minilm-l6")  # any tokenizer: the tiny llama's vocab is 100, ids are folded below
    task = get_task("causal-lm", tok, max_length=8, batch_size=4)
    batches = task.prepare({"text": SENTENCES[:8]})
    for b in batches:
        b["input_ids"] = b["input_ids"] % 100
        b["labels"] = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
    model = tiny_models["llama"].build()
    heads, neurons = importance_scores(get_adapter(model), "fisher", task.calibration(batches))
    assert all(torch.isfinite(h).all() and h.sum() > 0 for h in heads)
    assert math.isfinite(task.quality(model, batches)["perplexity"])


def test_image_classification_quality_calibration_and_inputs(tmp_path):
    folder = recipes.ensure_trained(str(vit_recipe(tmp_path)), log=lambda m: None)
    proc = load_preprocessor(str(folder), "image-classification")
    task = get_task("image-classification", proc, batch_size=32)
    batches = task.prepare(load_rows("sklearn:digits:validation", task.name, limit=64))
    assert batches[0]["pixel_values"].shape[1:] == (1, 8, 8)
    assert -1.0 <= float(batches[0]["pixel_values"].min()) and float(batches[0]["pixel_values"].max()) <= 1.0
    model = load_model(str(folder), task.model_class)
    q = task.quality(model, batches)
    assert 0 <= q["quality"] <= 100 and 0 <= q["macro_f1"] <= 100 and q["metric"] == "accuracy"
    calib = task.calibration(batches)
    assert math.isfinite(calib.loss_fn(model, calib.batches[0]).item())
    inputs = calib.model_inputs(calib.batches[0])[0]
    assert calib.features(model(**inputs), inputs).shape == (32, 10)  # features read a forward pass's output
    assert task.example_inputs(model, 3, 128)["pixel_values"].shape == (3, 1, 8, 8)


def test_digits_split_is_fixed_stratified_and_disjoint():
    tr = load_rows("sklearn:digits:train", "image-classification")
    va = load_rows("sklearn:digits:validation", "image-classification")
    assert (len(tr), len(va)) == (1437, 360)
    counts = np.bincount(va["label"], minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: ~36 of each digit
    train_keys = {np.asarray(im).tobytes() for im in tr["image"]}
    overlap = sum(np.asarray(im).tobytes() in train_keys for im in va["image"])
    assert overlap < 5  # (digits has a few duplicate images; the split itself is disjoint)


def test_npz_images(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "imgs.npz", pixels=rng.integers(0, 16, (5, 8, 8)), y=np.arange(5))
    rows = load_rows(tmp_path / "imgs.npz", "image-classification", columns={"image": "pixels", "label": "y"})
    assert len(rows) == 5 and np.asarray(rows["image"][0]).shape == (8, 8)
    np.savez(tmp_path / "bad.npz", image=np.zeros((5, 8, 8)), label=np.arange(4))
    with pytest.raises(UserError, match="same first dimension"):
        load_rows(tmp_path / "bad.npz", "image-classification")


@pytest.mark.parametrize("spec, fragment", [
    ("no-such-recipe", "unknown recipe"),
    ("missing/file.yaml", "recipe file not found"),
])
def test_bad_recipe_names(spec, fragment):
    with pytest.raises(UserError, match=fragment):
        resolve_model_path(f"recipe:{spec}")


def test_bad_recipe_contents_and_sources(tmp_path):
    path = vit_recipe(tmp_path)
    bad = yaml.safe_load(path.read_text())
    bad["training"]["epoch"] = 1
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(UserError, match=r"training\.epoch: unknown key 'epoch'; did you mean 'epochs'\?"):
        recipes.load_recipe(str(path))
    with pytest.raises(UserError, match="unknown data source 'sklearn:iris'"):
        load_rows("sklearn:iris", "image-classification")
    with pytest.raises(UserError, match="image processor"):
        get_task("image-classification", None).prepare({"image": [np.zeros((8, 8))], "label": [0]})


def test_image_shape_mismatch_is_a_user_error(tmp_path):
    folder = recipes.ensure_trained(str(vit_recipe(tmp_path)), log=lambda m: None)
    task = get_task("image-classification", load_preprocessor(str(folder), "image-classification"))
    batches = task.prepare({"image": [np.zeros((16, 16))] * 2, "label": [0, 1]})
    with pytest.raises(UserError, match=r"\(1, 16, 16\).*\(1, 8, 8\)"):
        task.quality(load_model(str(folder), task.model_class), batches)


def _write(path, study: dict):
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def test_image_study_search_and_evaluate_end_to_end(tmp_path, cli):
    """`slimformer search` and `evaluate` on a recipe model with a built-in data source."""
    recipe = vit_recipe(tmp_path)
    recipes.ensure_trained(str(recipe), log=lambda m: None)  # the CLI reuses it from the cache
    study = _write(tmp_path / "vit.yaml", {
        "model": f"recipe:{recipe}", "task": "image-classification",
        "data": {"validation": "sklearn:digits:validation", "validation_size": 64,
                 "calibration": "sklearn:digits:train", "calibration_size": 32},
        "device": {"threads": 1, "seq_len": 5, "rounds": 4, "warmup": 1},
        "space": {"heads": {"choices": [1, 2]}, "ffn": {"choices": [16, 32]}, "importance": ["fisher"]},
        "search": {"trials": 2, "seed": 0, "sampler": "random"},
    })  # no budget: a tiny model's timings are too noisy on a shared machine to promise a speedup
    res = cli("search", study)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "trials finished" in res.stdout and "training it once" not in res.stderr
    rep = cli("report", study, "--json", "--all", "--no-rescore")
    assert rep.returncode == 0, rep.stderr[-2000:]
    data = json.loads(rep.stdout)
    assert data["metric"] == "accuracy" and len(data["trials"]) == 2
    assert all(0 <= t["quality"] <= 100 for t in data["trials"])
    ev = cli("evaluate", f"recipe:{recipe}", "--study", study, "--json", "--rounds", "3")
    assert ev.returncode == 0, ev.stderr[-2000:]
    out = json.loads(ev.stdout)
    assert out["quality"] == out["baseline_quality"] and 0 <= out["quality"] <= 100


def test_causal_lm_workbench_builds_scores_and_times(tmp_path):
    from slimformer.methods import Plan
    from slimformer.searcher.config import load_study_config
    from slimformer.searcher.problem.workbench import Workbench

    recipe = lm_recipe(tmp_path, steps=20)
    study = _write(tmp_path / "lm.yaml", {
        "model": f"recipe:{recipe}", "task": {"type": "causal-lm", "max_length": 16},
        "data": {"format": "tsv", "validation": "lm.tsv", "calibration": "lm.tsv", "calibration_size": 16},
        "device": {"threads": 1, "seq_len": 16, "rounds": 3, "warmup": 1},
    })
    bench = Workbench(load_study_config(study), log=lambda m: None)
    assert bench.inputs["input_ids"].shape == (1, 16)
    plan = Plan.from_dict({"heads": [2, 2], "ffn": [32, 32], "importance": "fisher"})
    result = bench.score(bench.build(plan), plan, rounds=3)
    assert result["metric"] == "-perplexity" and math.isfinite(result["perplexity"]) and result["perplexity"] >= 1
    assert result["quality"] == -result["perplexity"] and result["speedup"] > 0
    assert result["params"] < sum(p.numel() for p in bench.model.parameters())
