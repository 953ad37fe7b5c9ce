"""The onnxruntime deployment runtime: export equals PyTorch, int8 layers become ORT int8, a search
and a profile with it, and clear errors for an unknown or missing runtime."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import onnx  # onnx and onnxruntime are in the test extra: a missing one fails here, never skips
import pytest


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _tiny_bert(tiny_models):
    t = tiny_models["bert"]
    return t, t.build()


def test_pruned_bert_in_ort_equals_pytorch(tiny_models):
    import torch
    from slimformer.methods import Plan, apply_plan
    from slimformer.searcher.devices.onnxruntime import ort_runner

    t, base = _tiny_bert(tiny_models)
    # a dropped layer, a layer with no attention left (NoAttention), narrower FFNs
    model = apply_plan(base, Plan(layers=[0, 2], heads=[0, 4, 2], ffn=[64, 64, 16]))
    inputs = t.inputs()  # one sequence padded: the mask must travel through the graph
    run, session = ort_runner(model, inputs, threads=1)
    with torch.inference_mode():
        ref = model(**inputs).logits.numpy()
    got = run()[0]
    assert got.shape == ref.shape
    assert abs(got - ref).max() < 1e-4


def test_int8_layers_become_ort_int8(tiny_models, tmp_path):
    from slimformer.methods import Plan, apply_plan
    from slimformer.searcher.devices.onnxruntime import RUNTIME

    t, base = _tiny_bert(tiny_models)
    model = apply_plan(base, Plan(bits=[8, 32, 8]))
    int8 = RUNTIME.build(model, t.inputs(), tmp_path, {})["int8_layers"]
    assert len(int8) == 2 * 6  # q, k, v, o, FFN in, FFN out of two layers
    assert all(n.startswith(("bert.encoder.layer.0.", "bert.encoder.layer.2.")) for n in int8)
    path = tmp_path / "model.onnx"
    ops = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    assert ops["MatMulInteger"] == len(int8)
    assert ops["DynamicQuantizeLinear"] >= 2
    assert ops["MatMul"] >= 6  # layer 1's projections (and attention's own matmuls) stay float32


def test_a_plans_int8_weights_choose_ort_s8_or_u8_reduce_range(tiny_models, tmp_path):
    import numpy as np
    import torch
    from onnx import TensorProto, numpy_helper
    from slimformer.methods import Plan, apply_plan
    from slimformer.searcher.devices.onnxruntime import RUNTIME, ort_session

    t, base = _tiny_bert(tiny_models)
    inputs = t.inputs()
    with torch.inference_mode():
        ref = base(**inputs).logits.numpy()
    got = {}
    for weights in ("s8", "u8"):
        folder = tmp_path / weights
        folder.mkdir()
        model = apply_plan(base, Plan(bits=8, int8_weights=weights))
        facts = RUNTIME.build(model, inputs, folder, {})
        assert facts["int8_weights"] == weights
        graph = onnx.load(str(folder / "model.onnx")).graph
        quantized = [i for i in graph.initializer if i.name.endswith("_quantized")]
        assert quantized
        want = TensorProto.INT8 if weights == "s8" else TensorProto.UINT8
        assert {i.data_type for i in quantized} == {want}
        span = max(int(numpy_helper.to_array(i).max()) - int(numpy_helper.to_array(i).min()) for i in quantized)
        # reduce_range: 7-bit weights (no u8 x s8 product saturates without VNNI); s8 uses all 8 bits
        assert span <= 128 if weights == "u8" else span > 200
        sess = ort_session(folder / "model.onnx", 1)
        feed = {k: v.numpy() for k, v in inputs.items() if k in {i.name for i in sess.get_inputs()}}
        got[weights] = sess.run(None, feed)[0]
        assert np.abs(got[weights] - ref).max() < 0.2 * np.abs(ref).max() + 1e-3  # int8 of the same model
    assert not np.array_equal(got["s8"], got["u8"])  # the choice changes what runs


def test_bf16_layers_are_refused_by_a_runtime_without_bf16_or_made_float(tiny_models):
    """A runtime with a reason (ONNX Runtime) refuses bits-16 layers; without one (OpenVINO, which sets
    bf16 precision model-wide) they become float32 layers holding their bf16-rounded weights."""
    import torch
    from slimformer.methods import Plan, apply_plan
    from slimformer.methods.quantize import is_bf16
    from slimformer.searcher.devices.graph import float_copy, has_bf16
    from slimformer.searcher.devices.onnxruntime import RUNTIME
    from slimformer.searcher.errors import UserError

    _, base = _tiny_bert(tiny_models)
    built = apply_plan(base, Plan(bits=[16, 32, 32]))
    with pytest.raises(UserError, match="bits 16.*ONNX Runtime"):
        float_copy(built, RUNTIME.refusal(16))
    fmodel, int8 = float_copy(built)
    assert has_bf16(built) and not has_bf16(fmodel) and int8 == []
    assert not any(is_bf16(m) for m in fmodel.modules())
    assert all(p.dtype == torch.float32 for p in fmodel.parameters())
    w_bf16 = dict(built.named_parameters())["bert.encoder.layer.0.attention.self.query.weight"]
    w_float = dict(fmodel.named_parameters())["bert.encoder.layer.0.attention.self.query.weight"]
    assert w_bf16.dtype == torch.bfloat16 and torch.equal(w_bf16.float(), w_float)
    ids = torch.randint(5, 90, (2, 7))
    with torch.no_grad():  # float32 compute on bf16-rounded weights: close to the bf16 layer's output
        assert torch.allclose(built(input_ids=ids).logits, fmodel(input_ids=ids).logits, atol=5e-2)


def test_profile_and_search_with_onnxruntime(tmp_path, make_study, cli, monkeypatch):
    """An ORT profile round-trips and is found by a study with device.runtime onnxruntime, whose
    trials are timed in ORT, predicted by that profile, and reported as onnxruntime figures."""
    import json

    import optuna
    from optuna.trial import TrialState
    from slimformer.searcher.cost.profile import (
        default_profile_path,
        load_profile,
        profile_device,
        save_profile,
    )

    monkeypatch.setenv("SLIMFORMER_CACHE", str(tmp_path / "cache"))
    profile = profile_device(1, "onnxruntime", hidden_sizes=(64,), quick=True, tokens=(32,), head_dims=(16,),
                             progress=False)
    assert profile["fingerprint"]["runtime"] == "onnxruntime" and profile["fingerprint"]["onnxruntime"]
    assert set(profile["linear"]) == {"float32", "int8", "int8_static"} and set(profile["attention"]) == {"float32"}
    path = save_profile(profile, default_profile_path(1, "onnxruntime"))
    assert load_profile(path) == json.loads(path.read_text())

    study = make_study(device={"runtime": "onnxruntime"}, search={"trials": 3},
                       space={"heads": {"choices": [2, 4]}, "ffn": {"choices": [128, 256]}, "bits": [32, 8]})
    res = cli("search", study)
    assert res.returncode == 0, res.stderr[-3000:]
    s = optuna.load_study(study_name="study", storage=f"sqlite:///{tmp_path / 'study.db'}")
    done = [t for t in s.get_trials() if t.state == TrialState.COMPLETE]
    assert len(done) == 3 and all(t.user_attrs["predicted_latency_ms"] > 0 for t in done)
    dev = s.user_attrs["device"]
    assert dev["runtime"] == "onnxruntime" and dev["uncompressed"]["onnxruntime"]["speedup"] > 0
    assert dev["attention"] in ("sdpa", "eager") and set(dev["attention_ms"]) == {"sdpa", "eager"}
    assert s.user_attrs["baseline"]["baseline_runtime"] == "eager"  # the one baseline: stock PyTorch float32
    rep = cli("report", study, "--no-rescore")
    assert rep.returncode == 0, rep.stderr[-2000:]
    assert "runtime onnxruntime" in rep.stdout and "float32 model in eager PyTorch" in rep.stdout
    assert "uncompressed model in onnxruntime" in rep.stdout


def test_unknown_runtime_is_exit_2(make_study, cli, expect_user_error):
    expect_user_error(cli("search", make_study(device={"runtime": "tensorrt"})), "device.runtime", "onnxruntime")
    expect_user_error(cli("profile", "--runtime", "tensorrt", "--quick"), "tensorrt")


def test_bits_16_with_onnxruntime_is_exit_2(make_study, cli, expect_user_error):
    study = make_study(device={"runtime": "onnxruntime"}, space={"bits": [32, 16]})
    expect_user_error(cli("search", study), "space.bits", "onnxruntime")


def test_gptq_int8_with_onnxruntime_is_exit_2(make_study, cli, expect_user_error):
    """ORT re-rounds int8 layers with its own quantize_dynamic: GPTQ's int8 values would not be what runs."""
    study = make_study(device={"runtime": "onnxruntime"}, space={"bits": [32, 8], "quant_method": ["rtn", "gptq"]})
    expect_user_error(cli("search", study), "space.quant_method", "onnxruntime")


def test_int8_weights_without_a_runtime_reading_them_is_exit_2(make_study, cli, expect_user_error):
    """Only ONNX Runtime quantizes int8 layers itself: searching its weight type elsewhere changes nothing."""
    study = make_study(device={"runtime": "eager"}, space={"bits": [32, 8], "int8_weights": ["s8", "u8"]})
    expect_user_error(cli("search", study), "space.int8_weights", "onnxruntime")


def test_missing_onnxruntime_is_exit_2(make_study, expect_user_error):
    """onnxruntime made unimportable in the child process: one line with the install command."""
    block = "import sys; sys.modules['onnxruntime'] = None; from slimformer.searcher.cli import main; sys.exit(main())"
    for args in (["search", str(make_study(device={"runtime": "onnxruntime"}))],
                 ["profile", "--runtime", "onnxruntime", "--quick"]):
        res = subprocess.run([sys.executable, "-c", block, *args], capture_output=True, text=True, timeout=300)
        expect_user_error(res, "pip install 'slimformer[onnx]'")


def test_auto_runtime_search_records_every_runtime_and_export_follows_the_fastest(tmp_path, make_study, cli):
    """device.runtime auto: each candidate is timed in every installed runtime that competes against
    the one baseline (stock float32 PyTorch), the fastest counts, and export writes its format."""
    import json

    import optuna
    from optuna.trial import TrialState
    from slimformer.searcher.devices.artifacts import default_format
    from slimformer.searcher.devices.registry import study_runtimes

    competing = study_runtimes("auto")
    assert set(competing) == {"eager", "onnxruntime", "openvino"}  # all three are in the test extra
    study = make_study(device={"runtime": "auto", "rounds": 3, "max_rounds": 6}, search={"trials": 2, "seed_sensitivity": False},
                       space={"heads": {"choices": [2, 4]}, "ffn": {"choices": [128, 256]}, "bits": [32, 8]})
    res = cli("search", study)
    assert res.returncode == 0, res.stderr[-3000:]
    s = optuna.load_study(study_name="study", storage=f"sqlite:///{tmp_path / 'study.db'}")
    done = [t for t in s.get_trials() if t.state == TrialState.COMPLETE]
    assert len(done) == 2
    for t in done:
        speeds = t.user_attrs["runtime_speedups"]
        assert set(speeds) == set(competing)
        assert t.user_attrs["runtime"] == max(speeds, key=speeds.get)
    assert set(s.user_attrs["device"]["uncompressed"]) == set(competing)
    assert s.user_attrs["baseline"]["baseline_runtime"] == "eager"
    trial = done[0]
    out = tmp_path / "export"
    exp = cli("export", study, "--trial", str(trial.number), "--out", str(out))
    assert exp.returncode == 0, exp.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").exists() else None
    fmt = default_format(trial.user_attrs["runtime"])
    if fmt == "pytorch":
        assert (out / "model.safetensors").exists() or any(out.glob("*.safetensors"))
    else:
        assert manifest is not None and manifest["format"] == fmt


def test_a_trial_scores_the_artifact_its_runtime_times(make_study):
    """With an artifact runtime the trial's quality is that of the ONNX Runtime session that was
    timed (what `export` hands over), not that of the PyTorch model it was exported from: their
    int8 kernels quantize activations differently, so the two differ for an int8 plan."""
    from slimformer.methods import Plan
    from slimformer.searcher.config import load_study_config
    from slimformer.searcher.problem.workbench import Workbench
    from slimformer.searcher.study.trial import evaluate

    bench = Workbench(load_study_config(make_study(device={"runtime": "onnxruntime"})), log=lambda msg: None)
    plan = Plan(ffn=128, bits=8)
    result = evaluate(bench, plan, {"latency_ms": 10.0})
    assert result["runtime"] == "onnxruntime"
    model = bench.build(plan)
    artifact = bench.quality(bench.deployed(model, "onnxruntime"))["quality"]
    pytorch = bench.quality(model)["quality"]
    assert abs(artifact - pytorch) > 1e-6  # the two int8 kernels really differ on this plan
    assert result["quality"] == pytest.approx(artifact, abs=1e-9)
