"""Number formats decided by the device (issue 24): what each runtime runs on a real kernel on this CPU,
the default space and the refusals that follow from it, static int8 in ONNX Runtime and OpenVINO, and
artifacts that carry (and are loaded with) the settings they were timed with."""

from __future__ import annotations

import json

import numpy as np
import pytest

NO_BF16_OR_INT8 = ("FP32",)  # an older CPU: the plugin lists neither BF16 nor INT8
EVERYTHING = ("FP32", "BF16", "INT8")  # AVX512-BF16 / AMX with VNNI


@pytest.fixture
def openvino_caps(monkeypatch):
    """Fake the CPU plugin's OPTIMIZATION_CAPABILITIES (read at run time by the openvino runtime)."""
    from slimformer.searcher.devices import openvino

    def fake(caps):
        monkeypatch.setattr(openvino, "capabilities", lambda: tuple(caps))

    return fake


@pytest.mark.parametrize("caps, fast_bf16, bits, schemes", [
    (NO_BF16_OR_INT8, True, [32, 8], ["dynamic"]),
    (EVERYTHING, True, [32, 16, 8], ["dynamic", "static"]),
    (EVERYTHING, False, [32, 8], ["dynamic", "static"]),  # bf16 emulated on this CPU: never pays
])
def test_native_choices_follow_the_cpu(openvino_caps, caps, fast_bf16, bits, schemes):
    from slimformer.searcher.devices.registry import get_runtime, native_choices, study_formats

    openvino_caps(caps)
    assert native_choices(("openvino",), fast_bf16) == (bits, schemes)
    formats = study_formats(("openvino",))["openvino"]
    assert ("bfloat16" in formats) == ("BF16" in caps) and ("int8_static" in formats) == ("INT8" in caps)
    assert (get_runtime("openvino").refusal(16) is None) == ("BF16" in caps)


def test_native_space_adds_the_int8_schemes_only_where_8_is_searched():
    from slimformer.spaces import SpaceConfig

    space = SpaceConfig.model_validate({"bits": {"choices": "native", "tie": "shared"}})
    assert space.bits.native
    resolved = space.with_native([32, 16, 8], ["dynamic", "static"])
    assert resolved.bits.choices == [32, 16, 8] and resolved.bits.tie == "shared"
    assert resolved.int8_scheme.choices == ["dynamic", "static"]
    assert space.with_native([32, 16], ["dynamic", "static"]).int8_scheme is None
    assert space.with_native([32, 8], ["dynamic"]).int8_scheme is None  # one choice: nothing to search
    pinned = SpaceConfig.model_validate({"bits": "native", "int8_scheme": ["static"]})
    assert pinned.with_native([32, 8], ["dynamic", "static"]).int8_scheme.choices == ["static"]


def test_a_native_space_must_be_resolved_before_it_is_bound(tiny_models):
    from slimformer.methods import get_adapter
    from slimformer.spaces import Space, SpaceError

    shape = get_adapter(tiny_models["bert"].build()).shape()
    with pytest.raises(SpaceError, match="space.bits: native"):
        Space.from_dict({"bits": "native"}, shape)


def test_refusals_name_the_format_and_the_reason(openvino_caps):
    from slimformer.searcher.devices.registry import check_runtime, check_space
    from slimformer.searcher.errors import UserError

    openvino_caps(NO_BF16_OR_INT8)
    with pytest.raises(UserError, match=r"space.bits: bits 16 cannot run with device.runtime openvino: .*BF16"):
        check_space(("openvino",), [32, 16], ())
    with pytest.raises(UserError, match=r"space.int8_scheme: bits 8 \(int8_static\) cannot run .*INT8"):
        check_space(("openvino",), [32, 8], (), int8_schemes=["static"])
    with pytest.raises(UserError, match="int8_static.*eager.*dynamic activation"):
        check_space(("eager",), [32, 8], (), int8_schemes=["static"])
    openvino_caps(EVERYTHING)
    check_space(("openvino",), [32, 16, 8], (), int8_schemes=["dynamic", "static"], shared_bits=True)
    with pytest.raises(UserError, match="whole model.*tie bits shared"):  # per layer: 32 beside 16
        check_space(("openvino",), [32, 16], ())
    check_space(check_runtime("auto"), [32, 16], ())  # eager PyTorch runs a layer-wise mix


def test_a_plan_goes_only_to_the_runtimes_that_run_it(openvino_caps):
    from slimformer.searcher.devices.registry import RUNTIMES

    openvino_caps(EVERYTHING)
    ov, ort, eager = RUNTIMES["openvino"], RUNTIMES["onnxruntime"], RUNTIMES["eager"]
    assert ov.plan_refusal([16, 8], "static") is None and ov.plan_refusal([16, 16]) is None
    assert "mix bits 32 and 16" in ov.plan_refusal([32, 16])
    assert ort.plan_refusal([8, 8], "static") is None and "bfloat16" in ort.plan_refusal([16, 8])
    assert eager.plan_refusal([32, 16]) is None and "int8_static" in eager.plan_refusal([8], "static")
    assert ov.plan_refusal([4, 32]) is None  # simulated bits run in float


def _calibration(t, n=8):
    inputs = t.inputs(seed=7)
    return [{k: v[i:i + 1].numpy() for k, v in inputs.items()} for i in range(min(n, len(inputs["input_ids"])))] * 2


def _fake_quant_reference(model, inputs, graph):
    """The tiny model in PyTorch, fake-quantized where the static QDQ `graph` quantizes: each int8 Linear
    with that graph's own int8 weights, and each tensor the graph quantizes (the inputs of those Linears
    and their MatMul outputs) with its scale and zero point, uint8: x -> (clamp(round(x / s) + z, 0, 255)
    - z) * s, at the module that produces it, so every reader sees it (the residual too, as in the graph).
    Returns (its logits, the logits with those weights and float activations, how many Linears)."""
    import torch
    from onnx import numpy_helper
    from slimformer.searcher.devices.graph import float_copy

    fmodel, _ = float_copy(model)
    modules = dict(fmodel.named_modules())
    init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    dq = {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}
    q_of = {n.input[0]: n for n in graph.node if n.op_type == "QuantizeLinear"}
    producer = {out: n for n in graph.node for out in n.output}

    def module_of(node_name):  # the longest module path that prefixes a node's name
        parts = node_name.removeprefix("/m/").split("/")
        for k in range(len(parts), 0, -1):
            if ".".join(parts[:k]) in modules:
                return ".".join(parts[:k])
        raise AssertionError(node_name)

    def params(q):
        return float(init[q.input[1]]), float(init[q.input[2]])

    linears, tensors, outputs = 0, {}, {}
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[0] not in dq or node.input[1] not in dq:
            continue
        name = module_of(node.name)
        wq = dq[node.input[1]]
        w = (init[wq.input[0]].astype(np.float32) - init[wq.input[2]].astype(np.float32)) * init[wq.input[1]]
        with torch.no_grad():
            modules[name].weight.copy_(torch.from_numpy(w.T))
        linears += 1
        source = producer[dq[node.input[0]].input[0]]  # the QuantizeLinear of the float tensor
        tensors[module_of(producer[source.input[0]].name)] = params(source)
        if node.output[0] in q_of:  # QDQ also quantizes a MatMul's output, before the bias Add
            outputs[name] = params(q_of[node.output[0]])
    with torch.no_grad():
        unquantized = fmodel(**inputs).logits.numpy()

    def fq(x, scale, zero):
        return (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale

    def at_output(y, p):
        return (fq(y[0], *p), *y[1:]) if isinstance(y, tuple) else fq(y, *p)

    for name, p in tensors.items():
        modules[name].register_forward_hook(lambda m, a, y, p=p: at_output(y, p))
    for name, p in outputs.items():
        modules[name].register_forward_hook(lambda m, a, y, p=p: fq(y - m.bias, *p) + m.bias)
    with torch.no_grad():
        return fmodel(**inputs).logits.numpy(), unquantized, linears


def test_static_int8_in_onnxruntime_agrees_with_its_fake_quantized_reference(tiny_models, tmp_path):
    """QDQ quantize_static on the int8 layers only (layer 1 stays float), calibrated on the inputs given;
    ONNX Runtime computes what a PyTorch fake-quantized reference with the graph's scales computes (within
    0.1% of the logits' range), and the int8 activations change the result (10x more than that)."""
    import onnx
    from slimformer.methods import Plan, apply_plan
    from slimformer.searcher.devices.registry import get_runtime

    t = tiny_models["bert"]
    model = apply_plan(t.build(), Plan(bits=[8, 32, 8], int8_scheme="static"))
    inputs = t.inputs()
    calibration = _calibration(t)
    ort = get_runtime("onnxruntime")
    facts = ort.build(model, inputs, tmp_path, {"calibration": calibration})
    assert facts["int8_scheme"] == "static" and len(facts["int8_layers"]) == 12
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    producer = {out: n.op_type for n in graph.node for out in n.output}
    projections = [n for n in graph.node if n.op_type == "MatMul" and "/layer." in n.name
                   and n.name.split("/")[-2] in ("query", "key", "value", "dense")]
    dequantized = {n.name.split("/")[4] for n in projections if producer.get(n.input[0]) == "DequantizeLinear"}
    assert len(projections) == 18 and dequantized == {"layer.0", "layer.2"}  # int8 activations there only
    session = ort.load({"model.onnx": (tmp_path / "model.onnx").read_bytes()}, threads=1)
    got = session({k: v.numpy() for k, v in inputs.items()})[0]
    ref, unquantized, fake = _fake_quant_reference(model, inputs, graph)
    assert fake == 12
    assert np.abs(got - ref).max() < 1e-3 * np.abs(ref).max()  # the same arithmetic up to float rounding
    assert np.abs(got - unquantized).max() > 10 * np.abs(got - ref).max()  # the int8 activations do count


def test_static_int8_without_calibration_inputs_is_a_clear_error(tiny_models, tmp_path):
    from slimformer.methods import Plan, apply_plan
    from slimformer.searcher.devices.registry import get_runtime

    t = tiny_models["bert"]
    model = apply_plan(t.build(), Plan(bits=8, int8_scheme="static"))
    with pytest.raises(ValueError, match="int8_scheme static needs calibration inputs"):
        get_runtime("onnxruntime").build(model, t.inputs(), tmp_path, {})


def test_static_int8_per_layer_in_openvino_survives_the_artifact_and_its_reload(tiny_models, tmp_path, monkeypatch):
    """nncf.quantize with every MatMul outside the int8 layers ignored: FakeQuantize ops (int8 activations)
    in layers 0 and 2 only; the artifact reloaded from its bytes computes what was built, within int8 error."""
    import openvino
    import torch
    from slimformer.methods import Plan, apply_plan
    from slimformer.searcher.devices import openvino as ov_runtime

    t = tiny_models["bert"]
    model = apply_plan(t.build(), Plan(bits=[8, 32, 8], int8_scheme="static"))
    inputs = t.inputs()
    flushed = ov_runtime.flushes_denormals()
    facts = ov_runtime.build(model, inputs, tmp_path, {"calibration": _calibration(t)})
    assert ov_runtime.flushes_denormals() == flushed  # NNCF's compiles leave this thread's FTZ as it was
    assert facts["int8_scheme"] == "static" and "nncf.quantize" in facts["int8_weights"]
    ir = openvino.Core().read_model(str(tmp_path / "model.xml"))
    layers = {op.get_friendly_name().split("/")[4] for op in ir.get_ops()
              if op.get_type_name() == "FakeQuantize" and "/layer" in op.get_friendly_name()}
    assert layers == {"layer.0", "layer.2"}
    session = ov_runtime.load({f: (tmp_path / f).read_bytes() for f in facts["files"]}, threads=1)
    got = session({k: v.numpy() for k, v in inputs.items()})[0]
    with torch.no_grad():
        ref = model(**inputs).logits.numpy()
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()


def test_a_loaded_openvino_artifact_compiles_with_the_settings_it_carries(tiny_models, tmp_path, monkeypatch,
                                                                         openvino_caps):
    """A bits-16 plan is compiled with bf16 inference precision; the artifact says so in compile.json and
    `load` compiles with exactly those settings (what export's manifest states)."""
    from slimformer.methods import Plan, apply_plan
    from slimformer.searcher.devices import openvino as ov_runtime

    openvino_caps(EVERYTHING)
    t = tiny_models["bert"]
    facts = ov_runtime.build(apply_plan(t.build(), Plan(bits=16)), t.inputs(), tmp_path, {})
    stored = json.loads((tmp_path / ov_runtime.COMPILE_FILE).read_text())
    assert stored == facts["compile_config"] and stored["INFERENCE_PRECISION_HINT"] == "bf16"
    seen = []
    real = ov_runtime.compile_ir
    monkeypatch.setattr(ov_runtime, "compile_ir", lambda m, threads, overrides=None: seen.append(overrides)
                        or real(m, threads, overrides))
    ov_runtime.load({f: (tmp_path / f).read_bytes() for f in facts["files"]}, threads=1)
    assert seen == [stored]
    (tmp_path / "b").mkdir()
    f32 = ov_runtime.build(apply_plan(t.build(), Plan(bits=[8, 32, 32])), t.inputs(), tmp_path / "b", {})
    assert f32["compile_config"]["INFERENCE_PRECISION_HINT"] == "f32"


def test_a_native_space_searches_static_int8_and_the_export_carries_it(make_study, cli, tmp_path):
    """`bits: native` under ONNX Runtime (which runs static int8 on every CPU): the search logs what it
    chose from the device, stores the formats in its device facts, runs static-int8 trials (the study pins
    the scheme to static), and the exported artifact says which scheme it carries."""
    study = make_study(device={"runtime": "onnxruntime"},
                       space={"heads": {"choices": [2, 4]}, "bits": {"choices": "native", "tie": "shared"},
                              "int8_scheme": ["static"]},
                       search={"trials": 3, "seed": 0, "sampler": "random"})  # the uniform seeds hold all-int8
    res = cli("search", study)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "bits: native on this CPU: 32, 8; int8 schemes dynamic, static" in res.stderr  # pinned to static
    report = json.loads(cli("report", study, "--json", "--all", "--no-rescore").stdout)
    assert report["device"]["formats"] == {"onnxruntime": ["float32", "int8", "int8_static"]}
    static = [t for t in report["trials"] if (t.get("plan") or {}).get("int8_scheme") == "static"
              and 8 in t["plan"]["bits"]]
    assert static, [t.get("plan") for t in report["trials"]]
    out = tmp_path / "exported"
    res = cli("export", study, "--trial", static[0]["number"], "--format", "onnx", "--out", out)
    assert res.returncode == 0, res.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["int8_scheme"] == "static" and manifest["int8_layers"]
    assert "quantize_static" in manifest["int8_weights"]


def test_openvino_telemetry_is_declined_in_slimformer(monkeypatch):
    """OpenVINO's telemetry forks a sender per conversion; offline, one hung a finished search at exit.
    With slimformer's OpenVINO runtime imported, its consent check declines even outside CI."""
    monkeypatch.delenv("CI", raising=False)
    import slimformer.searcher.devices.openvino  # noqa: F401
    from openvino_telemetry import Telemetry
    from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker

    assert OptInChecker().check(False, disable_in_ci=True) == ConsentCheckResult.DECLINED
    t = Telemetry(app_name="probe", app_version="0", tid="G-TEST", backend="ga4", enable_opt_in_dialog=False,
                  disable_in_ci=True)
    t.init(app_name="probe", app_version="0", tid="G-TEST", backend="ga4", enable_opt_in_dialog=False,
           disable_in_ci=True)
    assert t.consent is False


def test_an_openvino_session_runs_one_inference_per_call_for_all_outputs(monkeypatch):
    """A model with two outputs is inferred once per call, not once per output (benchmarks/peers.py once read
    each output from its own inference and timed OpenVINO at half its speed)."""
    import openvino
    import openvino.opset13 as ops
    from slimformer.searcher.devices import openvino as ov_runtime

    x = ops.parameter([1, 4], np.float32, name="x")
    model = openvino.Model([ops.relu(x), ops.abs(x)], [x])
    calls = []
    infer = ov_runtime.infer

    def counting(compiled):
        run = infer(compiled)
        return lambda feed: calls.append(1) or run(feed)

    monkeypatch.setattr(ov_runtime, "infer", counting)
    session = ov_runtime.session(ov_runtime.compile_ir(model, 1))
    feed = np.array([[-1.0, 2.0, -3.0, 4.0]], np.float32)
    relu, absolute = session({"x": feed})
    assert len(calls) == 1
    np.testing.assert_array_equal(relu, np.maximum(feed, 0))
    np.testing.assert_array_equal(absolute, np.abs(feed))


@pytest.mark.parametrize("default, bits, expected", [
    ("bf16", 8, "bf16"),  # every layer int8: the rest in the plugin's own default on this CPU
    ("f32", 8, "f32"),  # a CPU without native bf16: the plugin's default is f32
    ("bf16", [8, 32, 8], "f32"),  # a layer asks for float32: the whole model stays f32
])
def test_an_all_int8_plan_leaves_the_rest_to_the_plugins_default_precision(tiny_models, tmp_path, monkeypatch,
                                                                           default, bits, expected):
    from slimformer.methods import Plan, apply_plan
    from slimformer.searcher.devices import openvino as ov_runtime

    monkeypatch.setattr(ov_runtime, "default_precision", lambda: default)
    t = tiny_models["bert"]
    facts = ov_runtime.build(apply_plan(t.build(), Plan(bits=bits)), t.inputs(), tmp_path, {})
    assert facts["compile_config"]["INFERENCE_PRECISION_HINT"] == expected
    assert json.loads((tmp_path / ov_runtime.COMPILE_FILE).read_text()) == facts["compile_config"]


def test_the_plugins_default_precision_is_read_from_this_cpu():
    import openvino
    from slimformer.searcher.devices import openvino as ov_runtime

    hint = openvino.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()
    assert ov_runtime.default_precision() == hint and hint in {"f32", "bf16", "f16"}
