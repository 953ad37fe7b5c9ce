"""plan.attention, searched by space.attention: a built candidate runs the attention implementation
its plan names (same outputs either way) while the baseline keeps the study's; graphs exported for
ONNX Runtime do not read it; an exported PyTorch model reloads with it; searching it where no runtime
of the study reads it is exit 2 with one line."""

from __future__ import annotations

import onnx


def _sdpa_calls(monkeypatch) -> list:
    """Every call of torch's scaled_dot_product_attention from now on (transformers' "sdpa" attention
    makes one per layer; its "eager" attention none)."""
    import torch

    calls, real = [], torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    return calls


def test_a_candidate_runs_its_plans_attention_and_the_baseline_keeps_the_studys(make_study, monkeypatch):
    import torch
    from slimformer.methods import Plan
    from slimformer.searcher.config import load_study_config
    from slimformer.searcher.problem.workbench import Workbench

    bench = Workbench(load_study_config(make_study()), log=lambda msg: None)
    baseline = bench.choose_attention()
    assert baseline in ("sdpa", "eager")
    calls = _sdpa_calls(monkeypatch)
    out = {}
    for name in ("sdpa", "eager"):
        model = bench.build(Plan(heads=[2, 4, 1, 4], bits=[8, 32, 8, 32], attention=name))
        assert model.config._attn_implementation == name
        calls.clear()
        with torch.inference_mode():
            out[name] = bench.runner(model)().last_hidden_state  # the eager runtime's runner: what a trial times
        assert len(calls) == (4 if name == "sdpa" else 0)  # one fused SDPA call per layer, or none
    torch.testing.assert_close(out["sdpa"], out["eager"], atol=1e-5, rtol=0)
    assert bench.model.config._attn_implementation == baseline == bench.attention  # the baseline is untouched
    assert bench.build(Plan(heads=2)).config._attn_implementation == baseline  # no choice: the baseline's


def test_onnx_graphs_do_not_read_the_plans_attention(tiny_models, tmp_path):
    from slimformer.methods import Plan, apply_plan
    from slimformer.searcher.devices.onnxruntime import RUNTIME

    t = tiny_models["bert"]
    inputs = t.inputs()
    for source in ("sdpa", "eager"):  # the implementation the candidate is built from (the baseline's)
        base = t.build()
        base.set_attn_implementation(source)
        graphs = {}
        for name in (None, "sdpa", "eager"):
            folder = tmp_path / f"{source}-{name}"
            folder.mkdir()
            RUNTIME.build(apply_plan(base, Plan(heads=[2, 4, 1], attention=name)), inputs, folder, {})
            graphs[name] = sorted(n.op_type for n in onnx.load(str(folder / "model.onnx")).graph.node)
        assert graphs["sdpa"] == graphs["eager"] == graphs[None], source


def test_attention_without_a_runtime_reading_it_is_exit_2(make_study, cli, expect_user_error):
    """Only PyTorch runtimes run an attention implementation; ONNX Runtime runs an exported graph."""
    study = make_study(device={"runtime": "onnxruntime"}, space={"heads": [2, 4], "attention": ["sdpa", "eager"]})
    expect_user_error(cli("search", study), "space.attention", "onnxruntime", "eager, compile")


def test_export_pytorch_reloads_with_the_searched_attention(tmp_path, make_study, cli):
    """Every trial runs eager attention (a one-choice dimension is a constant); the exported model
    reloads with it, not with transformers' default (sdpa)."""
    from slimformer.methods import load_compressed

    study = make_study(space={"heads": [2, 4], "attention": ["eager"]},
                       search={"trials": 1, "seed_uniform": False, "seed_sensitivity": False})
    res = cli("search", study)
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "export"
    res = cli("export", study, "--trial", "0", "--format", "pytorch", "--out", out)
    assert res.returncode == 0, res.stderr[-3000:]
    model, _, plan = load_compressed(out)
    assert plan.attention == "eager" and model.config._attn_implementation == "eager"
