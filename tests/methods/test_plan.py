"""Plan: plain data that round-trips through dict/JSON/YAML/files and is validated with
ValueErrors that name the bad field."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import FrozenInstanceError

import pytest
from slimformer.methods import DistillSpec, ModelShape, Plan

SHAPE = ModelShape(num_layers=3, num_heads=4, num_kv_heads=4, intermediate_size=64, hidden_size=32)
GQA = ModelShape(num_layers=3, num_heads=4, num_kv_heads=2, intermediate_size=64, hidden_size=32)

FULL = Plan(
    layers=[2, 0],
    heads=[4, 0, 2],
    ffn=[64, 8, 0],
    importance="fisher",
    rank=[0, 4, 8],
    bits=[32, 8, 4],
    distill=DistillSpec(steps=10, temperature=3.0, alpha=0.25, losses=("logits", "hidden"), lr=5e-4,
                        freeze_embeddings=False),
    group_size=32,
    quant_method="gptq",
    smooth=0.5,
)
PLANS = [Plan(), Plan(heads=2, ffn=16, bits=16), FULL, Plan(heads=2, attention="eager")]


@pytest.mark.parametrize("plan", PLANS)
def test_round_trips(plan, tmp_path):
    assert Plan.from_dict(plan.to_dict()) == plan
    assert Plan.from_json(plan.to_json()) == plan
    assert Plan.from_yaml(plan.to_yaml()) == plan
    for name in ("plan.yaml", "plan.json"):
        plan.save(tmp_path / name)
        assert Plan.load(tmp_path / name) == plan
    resolved = plan.resolve(SHAPE)
    assert Plan.from_json(resolved.to_json()) == resolved


def test_plain_data():
    data = FULL.to_dict()
    assert data["layers"] == [0, 2]  # sorted, lists not tuples
    assert data["heads"] == [4, 0, 2]
    assert data["distill"]["losses"] == ["logits", "hidden"]
    assert data["quant_method"] == "gptq" and data["smooth"] == 0.5
    assert Plan().quant_method == "rtn" and Plan().smooth == 0.0 and Plan(smooth=1).smooth == 1.0
    assert Plan.from_dict({}) == Plan()
    assert Plan.from_yaml("") == Plan()
    assert Plan.from_dict({"distill": {"steps": 3}}).distill.steps == 3
    with pytest.raises(FrozenInstanceError):
        FULL.heads = 2


def test_attention_names_a_stock_implementation_or_the_baselines():
    assert Plan().attention is None and Plan.from_dict({}).attention is None  # None: the baseline's
    for name in ("sdpa", "eager"):
        plan = Plan.from_dict({"heads": 2, "attention": name})
        assert plan.to_dict()["attention"] == name and plan.resolve(SHAPE).attention == name
    for bad in ("flash_attention_2", "Eager", ""):
        with pytest.raises(ValueError, match="attention must be one of sdpa, eager"):
            Plan(attention=bad)
    with pytest.raises(ValueError, match="attention must be one of sdpa, eager"):
        Plan.from_yaml("attention: flex_attention")


def test_scalar_shorthand_expands_per_layer():
    plan = Plan(heads=2, ffn=16, rank=4, bits=8).resolve(SHAPE)
    assert plan.layers == (0, 1, 2)
    assert plan.heads == (2, 2, 2)
    assert plan.ffn == (16, 16, 16)
    assert plan.rank == (4, 4, 4)
    assert plan.bits == (8, 8, 8)
    default = Plan().resolve(SHAPE)
    assert default.heads == (4, 4, 4) and default.ffn == (64, 64, 64)
    assert default.rank == (0, 0, 0) and default.bits == (32, 32, 32)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"heads": -1}, "heads"),
        ({"ffn": [8, -2, 8]}, "ffn"),
        ({"rank": [1, 2, -3]}, "rank"),
        ({"bits": 5}, "bits"),
        ({"bits": [8, 8, 12]}, "bits"),
        ({"importance": "random"}, "importance"),
        ({"recovery": "magic"}, "recovery"),
        ({"layers": [0, 0]}, "layers"),
        ({"layers": [-1]}, "layers"),
        ({"layers": 3}, "layers"),
        ({"heads": "four"}, "heads"),
        ({"heads": [2, 1.5, 2]}, "heads"),
        ({"heads": True}, "heads"),
        ({"group_size": 4}, "group_size"),
        ({"quant_method": "awq"}, "quant_method"),
        ({"smooth": 1.5}, "smooth"),
        ({"smooth": -0.1}, "smooth"),
        ({"smooth": "half"}, "smooth"),
        ({"smooth": True}, "smooth"),
        ({"distill": {"steps": -1}}, "distill.steps"),
        ({"distill": {"alpha": 2}}, "distill.alpha"),
        ({"distill": {"losses": ["psychic"]}}, "distill.losses"),
        ({"distill": 7}, "distill"),
    ],
)
def test_invalid_fields_are_named(kwargs, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        Plan.from_dict(kwargs)


def test_unknown_fields_are_named():
    with pytest.raises(ValueError, match="hedas"):
        Plan.from_dict({"hedas": 2})
    with pytest.raises(ValueError, match="stepz"):
        Plan.from_dict({"distill": {"stepz": 2}})
    with pytest.raises(ValueError, match="mapping"):
        Plan.from_dict([1, 2])
    with pytest.raises(ValueError, match="YAML"):
        Plan.from_yaml("heads: [1, 2")


@pytest.mark.parametrize(
    "plan, field",
    [
        (Plan(heads=[4, 4]), "heads"),  # one entry per layer
        (Plan(ffn=[64, 64, 64, 64]), "ffn"),
        (Plan(rank=[1]), "rank"),
        (Plan(bits=[8, 8]), "bits"),
        (Plan(heads=5), "heads"),  # more heads than the layer has
        (Plan(ffn=[64, 65, 64]), r"ffn\[1\]"),
        (Plan(rank=33), "rank"),  # above min(hidden, intermediate)
        (Plan(layers=[0, 3]), "layers"),  # index out of range
    ],
)
def test_resolve_checks_against_the_shape(plan, field):
    with pytest.raises(ValueError, match=field):
        plan.resolve(SHAPE)


def test_grouped_query_attention_keeps_whole_groups():
    assert Plan(heads=[0, 2, 4]).resolve(GQA).heads == (0, 2, 4)
    with pytest.raises(ValueError, match=r"heads\[1\].*group"):
        Plan(heads=[2, 3, 4]).resolve(GQA)
    assert Plan(heads=3).resolve(SHAPE).heads == (3, 3, 3)  # no groups: any count


def test_dropped_layers_need_entries_too():
    plan = Plan(layers=[1], heads=[4, 2, 4]).resolve(SHAPE)
    assert plan.layers == (1,) and plan.heads == (4, 2, 4)


@pytest.mark.parametrize(
    "bits, simulated",
    [(None, False), (32, False), (16, False), (8, False), (4, True), (3, True), (2, True),
     ([32, 16, 8], False), ([32, 2, 8], True)],
)
def test_simulated_only_for_low_bits(bits, simulated):
    assert Plan(bits=bits).simulated is simulated
    assert Plan(bits=bits).resolve(SHAPE).simulated is simulated


def test_missing_plan_file_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        Plan.load(tmp_path / "nope.yaml")


def test_importing_plan_does_not_import_torch():
    code = ("import slimformer.methods, sys; from slimformer.methods import Plan; "
            "Plan(heads=2).resolve(slimformer.methods.ModelShape(2, 4, 4, 8, 8)); "
            "Plan.from_yaml(Plan(bits=8).to_yaml()); assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("plan, needs", [
    (Plan(), False),
    (Plan(heads=2, ffn=32, rank=4), False),  # magnitude pruning and low rank read no data
    (Plan(importance="fisher"), True),
    (Plan(recovery="mask_tuning"), True),
    (Plan(distill={"steps": 10}), True),
    (Plan(bits=8), False),  # round to nearest
    (Plan(bits=8, quant_method="gptq"), True),
    (Plan(bits=4, smooth=0.5), True),
    # gptq / smoothing with no layer quantized: nothing to calibrate. The workbench used to ask for
    # data.calibration here (its own rule); quantize's rule (bits <= 8) is the one kept everywhere.
    (Plan(bits=32, quant_method="gptq"), False),
    (Plan(bits=[32, 32, 16], smooth=0.5), False),
    (Plan(bits=[32, 8, 32], quant_method="gptq"), True),
])
def test_plan_needs_calibration_asks_each_method(plan, needs):
    from slimformer.methods import plan_needs_calibration

    assert plan_needs_calibration(plan, SHAPE) is needs
