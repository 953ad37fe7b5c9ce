"""The openvino runtime and the runtime registry: a pruned BERT in OpenVINO computes what PyTorch does,
int8 layers get int8 weights (and only they), a study times its trials in OpenVINO, and bits 16 or a
missing openvino stop with one line."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_pruned_bert_in_openvino_equals_pytorch(tiny_models):
    import torch
    from slimformer.methods import Plan, apply_plan
    from slimformer.searcher.devices.registry import get_runtime

    t = tiny_models["bert"]
    # a dropped layer, a layer with no attention left (a zero-width output projection), narrower FFNs
    model = apply_plan(t.build(), Plan(layers=[0, 2], heads=[0, 4, 2], ffn=[64, 64, 16]))
    inputs = t.inputs()  # one sequence padded: the mask must travel through the graph
    session = get_runtime("openvino").artifact_session(model, inputs, threads=1)
    with torch.inference_mode():
        ref = model(**inputs).logits.numpy()
    got = session({k: v.numpy() for k, v in inputs.items()})[0]
    assert session.outputs[0] == "logits" and got.shape == ref.shape
    assert np.abs(got - ref).max() < 1e-4


def test_int8_layers_get_int8_weights(tiny_models, tmp_path):
    import openvino
    import torch
    from slimformer.methods import Plan, apply_plan
    from slimformer.searcher.devices.registry import get_runtime

    t = tiny_models["bert"]
    model = apply_plan(t.build(), Plan(bits=[8, 32, 8]))
    facts = get_runtime("openvino").build(model, t.inputs(), tmp_path, {})
    assert sorted(facts["files"]) == ["compile.json", "model.bin", "model.xml"] and len(facts["int8_layers"]) == 12
    assert facts["int8_scheme"] == "dynamic" and facts["compile_config"]["INFERENCE_PRECISION_HINT"] == "f32"
    ir = openvino.Core().read_model(str(tmp_path / "model.xml"))
    consts = Counter(str(op.get_output_element_type(0)) for op in ir.get_ops() if op.get_type_name() == "Constant")
    assert consts["<Type: 'int8_t'>"] == 12  # the 12 int8 Linears, not layer 1's nor the embeddings
    compiled = openvino.Core().compile_model(ir, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    inputs = t.inputs()
    got = compiled({k: v.numpy() for k, v in inputs.items()})[0]
    with torch.inference_mode():
        ref = model(**inputs).logits.numpy()
    assert np.abs(got - ref).max() < 0.05  # int8 weights on torch.ao's grid; torch.ao also rounds activations


def test_openvino_flushes_denormals_only_while_it_runs():
    """The CPU plugin sets FTZ/DAZ on the thread that compiles a model with CPU_DENORMALS_OPTIMIZATION:
    compile_ir puts the caller's state back (PyTorch's own kernels on this thread keep denormals, and so
    does hypothesis in a later test of this process), and `infer` flushes during the inference only."""
    import openvino as ov
    from openvino import opset13 as ops
    from slimformer.searcher.devices.openvino import COMPILE_CONFIG, compile_ir, flushes_denormals, infer

    assert COMPILE_CONFIG["CPU_DENORMALS_OPTIMIZATION"] and not flushes_denormals()
    x = ops.parameter([1, 4], np.float32)
    model = ov.Model([ops.multiply(x, ops.constant(np.full((1, 4), 1e-30, np.float32)))], [x])
    run = infer(compile_ir(model, 1))
    assert not flushes_denormals()
    out = next(iter(run({0: np.full((1, 4), 1e-10, np.float32)}).values()))
    assert np.all(out == 0) and not flushes_denormals()  # 1e-40 is a float32 denormal: flushed inside only
    kept = infer(compile_ir(model, 1, {"CPU_DENORMALS_OPTIMIZATION": False}))
    assert np.all(next(iter(kept({0: np.full((1, 4), 1e-10, np.float32)}).values())) > 0)


def test_search_with_openvino(make_study, cli, tmp_path):
    import optuna
    from optuna.trial import TrialState

    study = make_study(device={"runtime": "openvino"}, search={"trials": 2},
                       space={"heads": {"choices": [2, 4]}, "ffn": {"choices": [128, 256]}, "bits": [32, 8]})
    res = cli("search", study)
    assert res.returncode == 0, res.stderr[-3000:]
    # no profile in the test's cache: measured, never predicted, and the line names the command that makes one
    assert "no device profile for this CPU/1 threads/openvino" in res.stderr
    assert "`slimformer profile --runtime openvino --threads 1`" in res.stderr
    s = optuna.load_study(study_name="study", storage=f"sqlite:///{tmp_path / 'study.db'}")
    done = [t for t in s.get_trials() if t.state == TrialState.COMPLETE]
    assert len(done) == 2 and all(t.user_attrs["runtime"] == "openvino" for t in done)
    assert s.user_attrs["device"]["runtime"] == "openvino" and s.user_attrs["device"]["openvino"]


def test_bits_16_with_onnxruntime_is_exit_2(make_study, cli, expect_user_error):
    study = make_study(device={"runtime": "onnxruntime"}, space={"bits": [32, 16]})
    expect_user_error(cli("search", study), "space.bits", "onnxruntime", "bfloat16")


def test_missing_openvino_is_exit_2(make_study, expect_user_error):
    block = "import sys; sys.modules['openvino'] = None; from slimformer.searcher.cli import main; sys.exit(main())"
    res = subprocess.run([sys.executable, "-c", block, "search", str(make_study(device={"runtime": "openvino"}))],
                         capture_output=True, text=True, timeout=300)
    expect_user_error(res, "pip install 'slimformer[openvino]'")


def test_every_runtime_declares_its_facts_once():
    from slimformer.searcher.config import load_study_config
    from slimformer.searcher.devices.artifacts import EXPORT_FORMATS
    from slimformer.searcher.devices.registry import RUNTIMES, get_runtime
    from slimformer.searcher.devices.runtime import FORMATS
    from slimformer.searcher.errors import UserError

    assert list(RUNTIMES) == ["eager", "compile", "onnxruntime", "openvino"]
    assert EXPORT_FORMATS == ("pytorch", "onnx", "openvino")
    for rt in RUNTIMES.values():
        assert (rt.make_runner is None) != (rt.build is None and rt.load is None)
        assert "float32" in rt.native_formats() and set(rt.formats()) == set(FORMATS)
    assert get_runtime("onnxruntime").refusal(16) and get_runtime("eager").refusal(16) is None
    assert get_runtime("eager").refusal(8, "static") and get_runtime("onnxruntime").refusal(8, "static") is None
    with pytest.raises(UserError, match="device.runtime: unknown runtime 'tvm'"):
        get_runtime("tvm")
    assert load_study_config(data={"device": {"runtime": "openvino"}}).device.runtime == "openvino"
