"""A cost model per number format: each runtime's profile holds a table per format it runs here
(`Runtime.profile_formats`), a plan is predicted from the tables of its formats (bits + int8_scheme), the
screen predicts a plan only from a table of its own format, and a profile of the previous version (no
such tables) is refused with one line. The tables here are synthetic (no timing): what is checked is
which table a plan is looked up in."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from slimformer.methods import Plan

HIDDEN, HEADS, FFN, LAYERS = 64, 4, 128, 3
TOKENS, WIDTHS, HEADS_GRID = [8, 32], [0, 16, 32, 64, 128, 256], [1, 2, 4, 8]


def _config():
    import transformers

    return transformers.BertConfig(vocab_size=100, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                   num_attention_heads=HEADS, intermediate_size=FFN, max_position_embeddings=64)


def synthetic_profile(runtime: str = "openvino", factors: dict | None = None) -> dict:
    """A valid profile whose float32 tables grow with the work and whose other formats' tables are the
    float32 ones times `factors[format]` (float32 itself is 1)."""
    from slimformer.searcher.cost.profile import PROFILE_KIND, PROFILE_VERSION

    factors = {"float32": 1.0, **(factors or {})}
    t, k, n = np.meshgrid(TOKENS, WIDTHS, WIDTHS, indexing="ij")
    lin = 0.01 + 1e-6 * t * k * n
    tw = np.array(TOKENS)[:, None] * np.array(WIDTHS)[None, :]
    hs = np.array(HEADS_GRID)[:, None] * np.array(TOKENS)[None, :] ** 2
    grid2 = np.ones((1, len(TOKENS)))
    profile = {"kind": PROFILE_KIND, "version": PROFILE_VERSION, "profile_seconds": 0.0,
               "fingerprint": {"runtime": runtime, "device": "cpu", "threads": 1},
               "settings": {"formats": list(factors)}, "linear": {}, "activation": {}, "attention": {},
               "overhead": {"bert": {"hidden": [HIDDEN], "tokens": TOKENS, "embed_ms": (0.05 * grid2).tolist(),
                                     "layer_ms": {}, "attn_ms": {}, "kernel_scale": {}}}}
    ov = profile["overhead"]["bert"]
    for fmt, f in factors.items():
        profile["linear"][fmt] = {"tokens": TOKENS, "in": WIDTHS, "out": WIDTHS, "ms": (f * lin).tolist()}
        ov["layer_ms"][fmt] = (0.02 * f * grid2).tolist()
        ov["attn_ms"][fmt] = (0.01 * (1.0 if fmt.startswith("int8") else f) * grid2).tolist()
        ov["kernel_scale"][fmt] = grid2.tolist()
        if fmt in ("float32", "bfloat16"):
            profile["activation"][fmt] = {"tokens": TOKENS, "width": WIDTHS, "ms": (f * 1e-5 * tw).tolist()}
            profile["attention"][fmt] = {"16": {"heads": HEADS_GRID, "seq": TOKENS, "ms": (f * 1e-5 * hs).tolist()}}
    return profile


def _ms(plan: Plan, profile: dict) -> float:
    from slimformer.searcher.cost.costmodel import predict

    return predict(plan, _config(), profile, seq_len=32)["latency_ms"]


# ----- which formats are profiled -------------------------------------------------------------
@pytest.mark.parametrize("caps, formats", [
    (("FP32",), ("float32", "int8")),
    (("FP32", "INT8"), ("float32", "int8", "int8_static")),
    (("FP32", "BF16", "INT8"), ("float32", "bfloat16", "int8", "int8_static")),
])
def test_openvino_profiles_the_formats_its_cpu_plugin_runs(caps, formats, monkeypatch):
    from slimformer.searcher.devices import openvino

    monkeypatch.setattr(openvino, "capabilities", lambda: caps)
    assert openvino.RUNTIME.profile_formats() == formats


def test_each_runtime_predicts_the_formats_its_profile_times():
    from slimformer.searcher.devices.registry import get_runtime

    ov, ort = get_runtime("openvino"), get_runtime("onnxruntime")
    assert ov.predicts([16]) and ov.predicts([8, 32], "static") and ov.predicts([8, 32])
    assert ort.predicts([8, 32], "static") and ort.predicts([8]) and not ort.predicts([16])
    assert ort.profile_formats() == ("float32", "int8", "int8_static")  # bits 16 is refused there


@pytest.mark.parametrize("fmt, activation_op", [("int8", "DynamicQuantizeLinear"), ("int8_static", "QuantizeLinear")])
def test_onnxruntime_kernels_quantize_as_its_candidates_are(fmt, activation_op, tmp_path):
    """ONNX Runtime's int8 kernel Linear quantizes its activations per call (dynamic), its int8_static one
    with scales calibrated on the feeds (QDQ); it has no bfloat16 kernels."""
    import onnx
    from onnx import helper
    from slimformer.searcher.cost.onnxbench import CALIBRATION_FEEDS, LINEAR, linear_graph
    from slimformer.searcher.devices.onnxruntime import RUNTIME

    nodes, inputs, outputs, inits = linear_graph(32, 64, 0)
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, initializer=inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "k.onnx"))
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((1, 8, 32)).astype(np.float32)} for _ in range(CALIBRATION_FEEDS)]
    run = RUNTIME.kernel(tmp_path / "k.onnx", 1, [LINEAR], fmt, feeds if fmt == "int8_static" else None)
    assert run({"x": np.ones((1, 4, 32), np.float32)})[0].shape == (1, 4, 64)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "k-int8.onnx")).graph.node
           if "x" in n.input}  # what reads the activations
    assert ops == {activation_op}
    with pytest.raises(ValueError, match="bfloat16"):
        RUNTIME.kernel(tmp_path / "k.onnx", 1, (), "bfloat16")


# ----- a plan is looked up in its format's tables ---------------------------------------------
@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_bf16_is_predicted_faster_than_float32_only_when_the_profile_says_so(factor):
    profile = synthetic_profile(factors={"bfloat16": factor, "int8": 0.7})
    f32, bf16 = _ms(Plan(), profile), _ms(Plan(bits=16), profile)
    assert (bf16 < f32) == (factor < 1)
    # the layers scale by the factor; the embeddings (float32 in every plan) do not
    assert min(factor, 1) * f32 < bf16 < max(factor, 1) * f32


@pytest.mark.parametrize("factor", [0.4, 1.6])
def test_static_int8_is_looked_up_in_its_own_table(factor):
    profile = synthetic_profile(factors={"int8": 1.0, "int8_static": factor})
    dynamic = _ms(Plan(bits=8), profile)
    static = _ms(Plan(bits=8, int8_scheme="static"), profile)
    assert (static < dynamic) == (factor < 1)
    # per layer: a plan keeping one layer in float32 differs from the dynamic one by its two int8 layers
    mixed = _ms(Plan(bits=[8, 32, 8], int8_scheme="static"), profile) - _ms(Plan(bits=[8, 32, 8]), profile)
    assert mixed == pytest.approx((static - dynamic) * 2 / 3, rel=1e-6)


def test_a_model_wide_runtime_runs_the_int8_layers_of_a_bf16_plan_in_bf16():
    """OpenVINO sets bf16 for the whole model: next to bits-16 layers an int8 layer's attention and
    activation are bf16's; eager keeps them float32 (its bf16 is per layer)."""
    factors = {"bfloat16": 0.25, "int8": 1.0}
    ov, eager = synthetic_profile("openvino", factors), synthetic_profile("eager", factors)
    plan = Plan(bits=[16, 8, 8])
    assert _ms(plan, ov) < _ms(plan, eager)
    assert _ms(Plan(bits=[32, 8, 8]), ov) == pytest.approx(_ms(Plan(bits=[32, 8, 8]), eager))


def test_a_format_without_a_table_is_not_covered():
    """Without int8_static tables a static plan is predicted as the dynamic one (not covered, so never
    screened on it); bf16 without tables is an error naming the format and the runtime."""
    from slimformer.searcher.cost.costmodel import CompiledProfile
    from slimformer.searcher.cost.profile import ProfileError

    cp = CompiledProfile(synthetic_profile(factors={"int8": 0.7}))
    assert cp.covers([32, 8]) and not cp.covers([32, 8], "static") and not cp.covers([16])
    assert cp.covers([4, 32])  # simulated bits are float32's
    assert _ms(Plan(bits=8, int8_scheme="static"), cp.profile) == pytest.approx(_ms(Plan(bits=8), cp.profile))
    with pytest.raises(ProfileError, match="no bfloat16 kernels .*runtime openvino"):
        _ms(Plan(bits=16), cp.profile)


def test_the_screen_predicts_a_plan_only_from_its_own_formats_table(monkeypatch):
    from slimformer.searcher.cost.costfit import CalibratedPredictor
    from slimformer.searcher.cost.screen import StudyPredictor
    from slimformer.searcher.devices import openvino

    monkeypatch.setattr(openvino, "capabilities", lambda: ("FP32", "BF16", "INT8"))
    config = _config()

    def screen(factors):
        return StudyPredictor({"openvino": CalibratedPredictor(synthetic_profile("openvino", factors), config, 32)})

    without_static = screen({"bfloat16": 0.5, "int8": 0.7})
    limit = without_static.predict(Plan(layers=[]))["latency_ms"] * 0.9  # below even the embeddings
    assert without_static.rejection(Plan(bits=16), limit) and without_static.rejection(Plan(bits=8), limit)
    assert without_static.rejection(Plan(bits=8, int8_scheme="static"), limit) is None  # measured, not screened
    with_static = screen({"bfloat16": 0.5, "int8": 0.7, "int8_static": 0.3})
    assert with_static.rejection(Plan(bits=8, int8_scheme="static"), limit)
    fast = Plan(bits=8, int8_scheme="static")
    assert with_static.predict(fast)["latency_ms"] < with_static.predict(Plan(bits=8))["latency_ms"]


# ----- the previous version ----------------------------------------------------------------------
def _old(tmp_path):
    old = copy.deepcopy(synthetic_profile(factors={"int8": 0.7}))
    old["version"] = 1
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    return path


def test_a_version_1_profile_is_refused_with_one_line(tmp_path, monkeypatch):
    from slimformer.searcher.cost.profile import ProfileError, load_profile

    path = _old(tmp_path)
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    message = str(err.value)
    assert "\n" not in message and "version 1 is not supported" in message and "expected 2" in message
    assert "re-run `slimformer profile`" in message and str(path) in message


def test_predict_with_a_version_1_profile_exits_2(tmp_path, tiny_model_dir, cli, expect_user_error):
    plan = tmp_path / "plan.yaml"
    plan.write_text("heads: 2\n")
    res = cli("predict", "--plan", plan, "--model", tiny_model_dir, "--profile", _old(tmp_path), "--runtime",
              "openvino")
    expect_user_error(res, "version 1 is not supported", "slimformer profile")


def test_a_cached_version_1_profile_counts_as_missing(tmp_path, monkeypatch):
    from slimformer.searcher.cost.profile import default_profile_path, find_profile

    monkeypatch.setenv("SLIMFORMER_CACHE", str(tmp_path / "cache"))
    path = default_profile_path(1, "openvino")
    path.parent.mkdir(parents=True)
    path.write_text(_old(tmp_path).read_text())
    with pytest.warns(UserWarning, match="ignoring cached device profile.*version 1"):
        assert find_profile(1, "openvino") is None
