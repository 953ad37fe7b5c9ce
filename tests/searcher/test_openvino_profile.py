"""`slimformer profile --runtime openvino` on the smallest grid: the same tables as the other runtimes,
timed through OpenVINO's own kernels (int8 Linear = NNCF weight-compressed MatMul; int8_static = nncf.quantize,
weights and activations; bfloat16 = the graph compiled at bf16 precision), a table per format the CPU
plugin runs (faked here to list BF16 and INT8, so every CPU makes all four), and `slimformer predict`
uses the profile."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import run_in_process

GRID = ("--quick", "--hidden-sizes", 64, "--head-dims", 16, "--tokens", 32)  # the tiny BERT's width


@pytest.fixture(scope="module")
def ov_profile(tmp_path_factory):
    from slimformer.searcher.devices import openvino

    out = tmp_path_factory.mktemp("ov-profile") / "openvino.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(openvino, "capabilities", lambda: ("FP32", "BF16", "INT8"))
        res = run_in_process("profile", "--runtime", "openvino", "--out", out, "--threads", 1, *GRID)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"device profile written to {out}" in res.stdout
    return out


def test_openvino_profile_has_the_tables_of_the_other_runtimes(ov_profile):
    from slimformer.searcher.cost.profile import RUNTIMES, load_profile

    assert "openvino" in RUNTIMES  # profiled=True in devices/openvino.py
    profile = load_profile(ov_profile)
    fp = profile["fingerprint"]
    assert fp["runtime"] == "openvino" and fp["openvino"] and fp["device"] == "cpu" and fp["threads"] == 1
    formats = {"float32", "bfloat16", "int8", "int8_static"}
    assert set(profile["linear"]) == formats and set(profile["settings"]["formats"]) == formats
    assert set(profile["attention"]) == set(profile["activation"]) == {"float32", "bfloat16"}  # bf16 is model-wide
    assert set(profile["overhead"]["bert"]["layer_ms"]) == formats
    tables = [profile["linear"][f]["ms"] for f in sorted(formats)]
    assert all(a != b for i, a in enumerate(tables) for b in tables[i + 1:])  # timed apart, not copied


def test_the_int8_kernel_is_the_runtimes_weight_compressed_matmul(tmp_path):
    """The grid's int8 Linear goes through the runtime's own `convert`: int8 weight constants feed the
    MatMul through a decompression (Convert, Multiply), and its input stays float32."""
    import numpy as np
    import onnx
    import openvino as ov
    from onnx import TensorProto, helper, numpy_helper
    from slimformer.searcher.cost.onnxbench import LINEAR
    from slimformer.searcher.devices.openvino import RUNTIME, convert

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 128)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(128).astype(np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name=f"/m/{LINEAR}/MatMul"),
             helper.make_node("Add", ["y", "b"], ["z"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "t", 64])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, "t", 128])], initializer=[w, b])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "k.onnx"))
    model = convert(tmp_path / "k.onnx", [LINEAR])
    consts = [op.get_element_type() for op in model.get_ops() if op.get_type_name() == "Constant"]
    assert any(t == ov.Type.i8 for t in consts) and model.inputs[0].get_element_type() == ov.Type.f32
    run = RUNTIME.kernel(tmp_path / "k.onnx", 1, [LINEAR])
    out = next(iter(run({"x": np.ones((1, 4, 64), np.float32)}).values()))
    assert out.shape == (1, 4, 128) and np.all(np.isfinite(out))


def test_the_int8_static_kernel_quantizes_weights_and_activations(tmp_path):
    """The grid's int8_static Linear is nncf.quantize on the kernel graph (calibrated on a few random
    inputs): a FakeQuantize on the MatMul's activation input, int8 weight constants; without calibration
    inputs it is refused."""
    import numpy as np
    import openvino as ov
    from slimformer.searcher.cost.onnxbench import LINEAR, linear_graph
    from slimformer.searcher.devices.openvino import RUNTIME, convert

    _save(tmp_path / "k.onnx", *linear_graph(64, 128, 0))
    calibration = [{"x": np.random.default_rng(i).standard_normal((1, 8, 64)).astype(np.float32)} for i in range(3)]
    model = convert(tmp_path / "k.onnx", [LINEAR], calibration)
    matmul = next(op for op in model.get_ops() if op.get_type_name() == "MatMul")
    assert matmul.input_value(0).get_node().get_type_name() == "FakeQuantize"  # the activations
    assert any(op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.i8 for op in model.get_ops())
    run = RUNTIME.kernel(tmp_path / "k.onnx", 1, [LINEAR], "int8_static", calibration)
    out = next(iter(run({"x": np.ones((1, 4, 64), np.float32)}).values()))
    assert out.shape == (1, 4, 128) and np.all(np.isfinite(out))
    with pytest.raises(ValueError, match="calibration"):
        RUNTIME.kernel(tmp_path / "k.onnx", 1, [LINEAR], "int8_static")


def _save(path, nodes, inputs, outputs, inits):
    from onnx import helper, save

    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, initializer=inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, str(path))


def test_predict_with_the_openvino_profile_ranks_plans(ov_profile, tiny_model_dir, tmp_path):
    def predict(plan: dict) -> dict:
        path = tmp_path / f"plan{len(list(tmp_path.iterdir()))}.yaml"
        path.write_text(yaml.safe_dump(plan))
        res = run_in_process("predict", "--plan", path, "--model", tiny_model_dir, "--profile", ov_profile,
                             "--runtime", "openvino", "--threads", 1, "--seq-len", 32, "--json")
        assert res.returncode == 0, res.stderr[-2000:]
        return json.loads(res.stdout)

    full, half, one = predict({}), predict({"layers": [0, 1], "ffn": 128}), predict({"layers": [0], "heads": 1, "ffn": 32})
    assert full["device"]["runtime"] == "openvino"
    assert 0 < one["latency_ms"] < half["latency_ms"] < full["latency_ms"]
    for fmt in ({"bits": 16}, {"bits": 8, "int8_scheme": "static"}):  # from their own tables
        assert 0 < predict({**fmt, "layers": [0], "heads": 1, "ffn": 32})["latency_ms"] < predict(fmt)["latency_ms"]
