"""`slimformer profile` on the smallest grid (--quick with --hidden-sizes/--head-dims/--tokens)
writes a profile for this device, and `slimformer predict` uses it: the predicted size is the
size of the model the plan builds, and a smaller plan is predicted faster."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import assert_user_error, run_in_process

GRID = ("--quick", "--hidden-sizes", 64, "--head-dims", 16, "--tokens", 32)  # the tiny BERT's width


@pytest.fixture(scope="module")
def profile_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("profile") / "device.json"
    res = run_in_process("profile", "--out", out, "--threads", 1, *GRID)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"device profile written to {out}" in res.stdout
    return out


def test_profile_on_the_smallest_grid(profile_file):
    from slimformer.searcher.cost.profile import load_profile

    profile = load_profile(profile_file)
    assert profile["fingerprint"]["threads"] == 1 and profile["fingerprint"]["runtime"] == "eager"
    assert profile["settings"]["hidden_sizes"] == [64] and profile["settings"]["tokens"] == [32]
    assert profile["settings"]["quick"] and profile["profile_seconds"] > 0


@pytest.mark.parametrize("bad", ["64,x", "0", ""])
def test_profile_grid_lists_must_be_positive_integers(bad, tmp_path):
    res = run_in_process("profile", "--out", tmp_path / "p.json", "--hidden-sizes", bad)
    assert_user_error(res, "--hidden-sizes", "positive integers")
    assert not (tmp_path / "p.json").exists()


def _predict(plan: dict, model_dir, profile_file, tmp_path, *extra):
    path = tmp_path / f"plan{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(plan))
    return run_in_process("predict", "--plan", path, "--model", model_dir, "--profile", profile_file,
                          "--threads", 1, "--seq-len", 32, *extra)


def test_predict_gives_the_built_size_and_ranks_plans(profile_file, tiny_model_dir, tmp_path):
    import transformers as T
    from slimformer.methods import Plan, apply_plan, model_size

    plan = {"layers": [0, 1, 2], "heads": [2, 4, 1, 4], "ffn": [128, 64, 256, 32]}
    res = _predict(plan, tiny_model_dir, profile_file, tmp_path, "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout)
    built = model_size(apply_plan(T.BertModel.from_pretrained(tiny_model_dir).eval(), Plan.from_dict(plan)))
    assert got["params"] == built["params"]
    assert got["size_mb"] == pytest.approx(built["size_mb"])
    assert got["device"]["threads"] == 1 and not got["simulated"]

    full = json.loads(_predict({}, tiny_model_dir, profile_file, tmp_path, "--json").stdout)
    one = json.loads(_predict({"layers": [0], "heads": 1, "ffn": 32}, tiny_model_dir, profile_file, tmp_path,
                              "--json").stdout)
    assert 0 < one["latency_ms"] < got["latency_ms"] < full["latency_ms"]

    text = _predict(plan, tiny_model_dir, profile_file, tmp_path)
    assert text.returncode == 0 and text.stdout.startswith(f"predicted latency: {got['latency_ms']:.2f} ms")
