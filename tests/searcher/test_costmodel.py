"""Device profiles, the cost model and its online calibration (fast: one tiny profile)."""

from __future__ import annotations

import json
import math
import time
import warnings

import pytest
from slimformer.methods import Plan
from slimformer.searcher.cost.costfit import CalibratedPredictor
from slimformer.searcher.cost.costmodel import model_facts, predict
from slimformer.searcher.cost.profile import (
    PROFILE_VERSION,
    ProfileError,
    default_profile_path,
    find_profile,
    load_profile,
    profile_device,
    save_profile,
)

HIDDEN, HEADS, FFN, LAYERS = 32, 4, 64, 3  # a tiny BERT, head_dim 8


@pytest.fixture(scope="module")
def profile():
    return profile_device(1, hidden_sizes=(HIDDEN,), quick=True, tokens=(8, 16), head_dims=(8,), progress=False)


def bert_config():
    import transformers

    return transformers.BertConfig(vocab_size=100, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                   num_attention_heads=HEADS, intermediate_size=FFN, max_position_embeddings=64)


@pytest.fixture
def config():
    return bert_config()


def _latency(plan, config, profile, **kw) -> float:
    return predict(plan, config, profile, seq_len=8, **kw)["latency_ms"]


# ----- profiles ------------------------------------------------------------------------------
def test_quick_profile_round_trips(profile, tmp_path):
    assert profile["version"] == PROFILE_VERSION
    assert profile["fingerprint"]["threads"] == 1 and profile["fingerprint"]["runtime"] == "eager"
    assert set(profile["linear"]) == set(profile["settings"]["formats"]) == {"float32", "bfloat16", "int8"}  # no static: eager runs none
    assert "bert" in profile["overhead"]
    path = save_profile(profile, tmp_path / "p.json")
    assert load_profile(path) == json.loads(json.dumps(profile))


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "not a readable JSON"),
        ('{"kind": "slimformer-device-profile", "version": 999}', "version 999 is not supported"),
        ('{"model": "bert", "weights": [1, 2]}', "not a slimformer device profile"),
        ("[1, 2, 3]", "not a slimformer device profile"),
    ],
)
def test_bad_profile_files_raise_profile_error(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ProfileError, match=message):
        load_profile(path)


def test_truncated_table_is_rejected(profile, tmp_path):
    broken = json.loads(json.dumps(profile))
    broken["linear"]["float32"]["ms"] = broken["linear"]["float32"]["ms"][:-1]
    (tmp_path / "p.json").write_text(json.dumps(broken))
    with pytest.raises(ProfileError, match=r"linear\.float32\.ms has shape"):
        load_profile(tmp_path / "p.json")
    with pytest.raises(ProfileError, match="not found"):
        load_profile(tmp_path / "missing.json")


def test_unknown_runtime_lists_allowed_ones():
    with pytest.raises(ProfileError, match="unknown runtime 'tensorrt'; allowed: eager"):
        profile_device(1, runtime="tensorrt", progress=False)
    with pytest.raises(ProfileError, match="allowed"):
        default_profile_path(1, "tensorrt")


def test_find_profile_uses_the_cache_and_warns_on_foreign_files(profile, tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMFORMER_CACHE", str(tmp_path / "cache"))
    assert find_profile(1) is None
    path = default_profile_path(1)
    assert path.parent == tmp_path / "cache" / "profiles"
    save_profile(profile, path)
    assert find_profile(1) == json.loads(json.dumps(profile))
    assert find_profile(2) is None  # another thread count is another fingerprint
    path.write_text("garbage")
    with pytest.warns(UserWarning, match="ignoring cached device profile"):
        assert find_profile(1) is None
    foreign = json.loads(json.dumps(profile))
    foreign["fingerprint"]["cpu"] = "Some Other CPU"
    save_profile(foreign, tmp_path / "other.json")
    with pytest.warns(UserWarning, match="another setup .*cpu"):
        assert find_profile(1, path=tmp_path / "other.json") is not None


# ----- predictions ---------------------------------------------------------------------------
def test_fewer_heads_neurons_layers_never_predict_slower(profile, config):
    full = _latency(Plan(), config, profile)
    for bits in (32, 16, 8):
        prev = math.inf
        for heads in (4, 3, 2, 1, 0):
            ms = _latency(Plan(heads=heads, bits=bits), config, profile)
            assert ms <= prev + 1e-9, (bits, heads)
            prev = ms
        prev = math.inf
        for ffn in (64, 48, 32, 16, 0):
            ms = _latency(Plan(ffn=ffn, bits=bits), config, profile)
            assert ms <= prev + 1e-9, (bits, ffn)
            prev = ms
    assert _latency(Plan(layers=[0, 1]), config, profile) <= full
    assert _latency(Plan(layers=[0]), config, profile) <= _latency(Plan(layers=[0, 1]), config, profile)
    assert _latency(Plan(heads=[4, 0, 4]), config, profile) < full


def test_precision_changes_latency_and_size(profile, config):
    p = {b: predict(Plan(bits=b), config, profile, seq_len=8) for b in (32, 16, 8, 4, 2)}
    assert p[16]["latency_ms"] != p[32]["latency_ms"] and p[8]["latency_ms"] != p[32]["latency_ms"]
    assert p[2]["size_mb"] < p[4]["size_mb"] < p[8]["size_mb"] < p[16]["size_mb"] < p[32]["size_mb"]
    assert p[4]["simulated"] and not p[8]["simulated"]
    assert p[4]["latency_ms"] == pytest.approx(p[32]["latency_ms"])  # simulated bits run in float32
    assert p[32]["params"] == p[4]["params"] > 0 and p[32]["flops"] > 0 and p[32]["peak_memory_mb"] > 0


def test_low_rank_and_batch_are_costed(profile, config):
    dense = predict(Plan(), config, profile, seq_len=8)
    low = predict(Plan(rank=4), config, profile, seq_len=8)
    assert low["params"] < dense["params"] and low["flops"] < dense["flops"]
    assert _latency(Plan(), config, profile, batch_size=4) > dense["latency_ms"]
    with pytest.raises(ValueError, match="seq_len"):
        predict(Plan(), config, profile, seq_len=0)


def test_predict_is_fast(profile, config):
    plans = [Plan(heads=[1 + i % 4, 2, 3], ffn=[16 * (1 + i % 4), 32, 64], bits=[32, 16, 8][i % 3]) for i in range(200)]
    predict(plans[0], config.to_dict(), profile)
    t0 = time.perf_counter()
    for plan in plans:
        predict(plan, config, profile)
    assert (time.perf_counter() - t0) / len(plans) < 5e-3  # generous; typically ~0.1 ms


@pytest.mark.parametrize("plan", [
    Plan(),
    Plan(layers=[0, 2], heads=[4, 0, 2], ffn=[64, 16, 0]),
    Plan(heads=2, ffn=48, bits=[16, 8, 4]),
    Plan(rank=8, ffn=48, bits=[8, 16, 32]),
    Plan(heads=[0, 2, 4], ffn=[64, 0, 32], bits=8),
    Plan(bits=3, group_size=8),
])
def test_predicted_size_matches_a_built_model(plan, profile, config):
    import transformers
    from slimformer.methods import apply_plan, model_size

    model = transformers.BertModel(config).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        built = apply_plan(model, plan)
    real = model_size(built, group_size=plan.group_size)
    pred = predict(plan, config, profile)
    assert pred["params"] == pytest.approx(real["params"], rel=0.02)
    assert pred["size_bytes"] == pytest.approx(real["size_bytes"], rel=0.02)
    assert pred["simulated"] == real["simulated"]


def test_predicted_params_count_narrow_embeddings(profile):
    """ELECTRA's embeddings are narrower than its layers (embedding_size) and projected up: the
    cost model counts them at their own width, plus the projection."""
    import transformers
    from slimformer.methods import model_size

    config = transformers.ElectraConfig(vocab_size=100, embedding_size=16, hidden_size=HIDDEN,
                                        num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                        intermediate_size=FFN, max_position_embeddings=64)
    real = model_size(transformers.ElectraModel(config))["params"]  # ELECTRA has no pooler
    assert predict(Plan(), config, profile, pooler=False)["params"] == real


def test_config_without_model_type_is_a_clear_error(profile):
    with pytest.raises(ValueError, match="model_type"):
        model_facts({"hidden_size": 32})
    with pytest.raises(ValueError, match="no adapter"):
        predict(Plan(), {"model_type": "t5"}, profile)


# ----- calibration ---------------------------------------------------------------------------
def test_calibrated_predictor_learns_a_scale(profile, config):
    cal = CalibratedPredictor(profile, config, seq_len=8)
    assert cal.margin() == pytest.approx(0.25)
    plans = [Plan(heads=h, ffn=f, bits=b) for h, f, b in
             [(4, 64, 32), (2, 32, 16), (1, 16, 8), (3, 48, 32), (4, 16, 16), (2, 64, 8), (1, 64, 32)]]
    for i, plan in enumerate(plans):
        cal.observe(plan, 1.5 * cal.predict_raw(plan)["latency_ms"] * (1 + 0.01 * (-1) ** i))
    err = cal.error()
    assert {"mape", "spearman", "n"} <= set(err) and err["n"] == len(plans)
    assert err["mape"] < 0.1 and err["raw_mape"] > 0.3
    out = cal.predict(Plan(heads=3, ffn=32))
    assert out["calibrated"] and out["latency_ms"] == pytest.approx(1.5 * out["raw_latency_ms"], rel=0.1)
    assert 0 < cal.margin() < 0.25
    with pytest.raises(ValueError, match="positive"):
        cal.observe(Plan(), -1.0)


def test_calibration_with_paired_baselines_cancels_load_drift(profile, config):
    cal = CalibratedPredictor(profile, config, seq_len=8)
    base_pred = cal.predict_raw(Plan())["latency_ms"]
    plans = [Plan(heads=h, ffn=f) for h, f in [(4, 64), (2, 32), (1, 16), (3, 48), (4, 16), (2, 64)]]
    for i, plan in enumerate(plans):
        load = 1.0 + 0.5 * (i % 2)  # every other measurement runs 50% slower, baseline included
        raw = cal.predict_raw(plan)["latency_ms"]
        cal.observe(plan, 2.0 * raw * load, baseline_ms=2.0 * base_pred * load)
    assert cal.targets()[1] == pytest.approx(cal.targets()[0] / cal.predict_raw(plans[0])["latency_ms"]
                                             * cal.predict_raw(plans[1])["latency_ms"])
    err = cal.error()
    assert err["drift_corrected"] and err["mape"] < 0.01 and err["spearman"] == pytest.approx(1.0)
    assert cal.margin() >= 0.05  # the margin still covers the drift seen in the raw measurements


# ----- GPU -----------------------------------------------------------------------------------
def test_cuda_profile():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the CUDA profile path (synchronised timings, no int8) is untested here")
    prof = profile_device(1, hidden_sizes=(HIDDEN,), quick=True, tokens=(16,), head_dims=(8,), progress=False,
                          device="cuda")
    assert prof["fingerprint"]["device"] == "cuda" and "int8" not in prof["linear"]
    with pytest.raises(ProfileError, match="no int8 kernels"):
        predict(Plan(bits=8), {"model_type": "bert", "hidden_size": 32, "num_attention_heads": 4,
                               "intermediate_size": 64, "num_hidden_layers": 3, "vocab_size": 100}, prof)
