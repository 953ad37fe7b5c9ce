"""Bad input: exit code 2, one clear line on stderr, no traceback, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_help_on_every_command(cli):
    for cmd in ("search", "report", "export", "compress", "evaluate"):
        res = cli(cmd, "--help")
        assert res.returncode == 0 and "usage: slimformer" in res.stdout


def test_malformed_yaml(tmp_path, cli, expect_user_error):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    expect_user_error(cli("search", bad), "malformed YAML")


def test_unknown_key_did_you_mean(tmp_path, tiny_model_dir, make_study, cli, expect_user_error):
    path = make_study(budgte={"speedup": 2})
    expect_user_error(cli("search", path), "budgte", "budget")
    assert not list(tmp_path.glob("*.db"))


def test_wrong_type(tmp_path, tiny_model_dir, make_study, cli, expect_user_error):
    path = make_study(search={"trials": "many"})
    expect_user_error(cli("search", path), "search.trials")


def test_empty_space_choices(tmp_path, tiny_model_dir, make_study, cli, expect_user_error):
    path = make_study(space={"heads": {"choices": []}})
    expect_user_error(cli("search", path), "space.heads")
    assert not list(tmp_path.glob("*.db"))


def test_unreachable_storage(tmp_path, tiny_model_dir, make_study, cli, expect_user_error):
    path = make_study()
    res = cli("search", path, "--storage", "postgresql://nobody:pw@127.0.0.1:1/nodb")
    expect_user_error(res, "unreachable")
    res = cli("search", path, "--storage", "sqlite:////nonexistent-dir/x.db")
    expect_user_error(res, "does not exist")


def test_unreachable_budget_is_refused_before_trials(tmp_path, tiny_model_dir, make_study, cli, expect_user_error):
    path = make_study(budget={"speedup": 500.0})
    expect_user_error(cli("search", path), "out of reach")
    assert not list(tmp_path.glob("*.db"))


def test_missing_model_path(tmp_path, cli, expect_user_error):
    plan = tmp_path / "plan.yaml"
    plan.write_text("heads: 2\n")
    expect_user_error(cli("compress", "--model", tmp_path / "nope", "--plan", plan, "--out", tmp_path / "o"),
                      "not found")


def test_unsupported_model_type(tmp_path, cli, expect_user_error):
    import transformers as T

    d = tmp_path / "t5"
    T.T5Model(T.T5Config(vocab_size=100, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)).save_pretrained(d)
    plan = tmp_path / "plan.yaml"
    plan.write_text("heads: 1\n")
    res = cli("compress", "--model", d, "--plan", plan, "--out", tmp_path / "o")
    expect_user_error(res, "t5", "bert")


def test_invalid_plan_file(tmp_path, tiny_model_dir, make_study, cli, expect_user_error):
    plan = tmp_path / "plan.yaml"
    plan.write_text("heads: 9\n")  # the tiny model has 4
    res = cli("compress", "--model", tiny_model_dir, "--plan", plan, "--out", tmp_path / "o")
    expect_user_error(res, "heads")
    plan.write_text("bits: 5\n")
    expect_user_error(cli("compress", "--model", tiny_model_dir, "--plan", plan, "--out", tmp_path / "o"),
                      "bits")


def test_wrong_data_column(tmp_path, tiny_model_dir, make_study, cli, expect_user_error):
    path = make_study(data={"columns": {"score": "rating"}})
    res = cli("evaluate", tiny_model_dir, "--study", path)
    expect_user_error(res, "rating", "score")


def test_tampered_export(tmp_path, tiny_model_dir, make_study, cli, expect_user_error):
    plan = tmp_path / "plan.yaml"
    plan.write_text("heads: 2\nffn: 128\n")
    out = tmp_path / "out"
    res = cli("compress", "--model", tiny_model_dir, "--plan", plan, "--out", out)
    assert res.returncode == 0, res.stderr
    weights = Path(out) / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-5] ^= 0xFF
    weights.write_bytes(bytes(raw))
    path = make_study()
    expect_user_error(cli("evaluate", out, "--study", path), "sha256")


@pytest.mark.parametrize("argv", [["search", "--trials", "x"], ["export", "--best"], ["frobnicate"]])
def test_bad_flags(argv, cli):
    res = cli(*argv)
    assert res.returncode == 2 and "Traceback" not in res.stderr


def test_corrupt_or_foreign_profile(tmp_path, tiny_model_dir, cli, expect_user_error):
    plan = tmp_path / "plan.yaml"
    plan.write_text("heads: 2\n")
    bad = tmp_path / "profile.json"
    bad.write_text("{not json")
    expect_user_error(cli("predict", "--plan", plan, "--model", tiny_model_dir, "--profile", bad), "profile")
    bad.write_text('{"version": 1, "something": "else"}')
    expect_user_error(cli("predict", "--plan", plan, "--model", tiny_model_dir, "--profile", bad), "profile")


def test_unknown_runtime_for_profile(cli, expect_user_error):
    expect_user_error(cli("profile", "--runtime", "tensorrt", "--quick"), "tensorrt")


@pytest.mark.parametrize("space", [{"bits": [32, 8], "quant_method": ["rtn", "gptq"]},
                                   {"bits": [8], "smooth": [0.5]},
                                   {"heads": [2, 4], "distill": {"steps": [100]}}])  # a one-choice constant
def test_calibrated_choices_need_calibration(space, make_study, capsys, monkeypatch, tmp_path):
    from slimformer.searcher.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["search", str(make_study(space=space, data={"calibration": None}))]) == 2
    err = capsys.readouterr().err
    assert "gptq or smoothing, which need data.calibration" in err and "Traceback" not in err
    assert not (tmp_path / "study.db").exists()  # refused before the storage was written
