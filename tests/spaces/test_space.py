"""slimformer.spaces: config validation, sampling with real Optuna trials, plan rebuilding."""

from __future__ import annotations

import subprocess
import sys
import warnings
from dataclasses import replace

import optuna
import pytest
import yaml
from pydantic import ValidationError
from slimformer.methods.plan import ModelShape, Plan
from slimformer.spaces import (
    Space,
    SpaceConfig,
    SpaceError,
    default_space,
    format_validation_error,
    parse_space_config,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

MINILM = ModelShape(num_layers=6, num_heads=12, num_kv_heads=12, intermediate_size=1536, hidden_size=384)
GQA = ModelShape(num_layers=4, num_heads=32, num_kv_heads=8, intermediate_size=2048, hidden_size=512)

FULL_YAML = """
space:
  heads:      {choices: [4, 6, 8, 10, 12], tie: per_layer}
  ffn:        {choices: [384, 768, 1152, 1536], tie: per_layer}
  depth:      {min: 4}
  bits:       {choices: [32, 16, 8], tie: per_layer}
  rank:       {choices: [0, 64, 128], tie: shared}
  importance: {choices: [magnitude, fisher]}
  distill:    {steps: [0, 100, 300], lr: [1.0e-4, 3.0e-4], losses: [[embedding], [embedding, hidden]]}
"""


def full_space(shape: ModelShape = MINILM) -> Space:
    return Space.from_dict(yaml.safe_load(FULL_YAML)["space"], shape)


def space_of(data: dict, shape: ModelShape = MINILM) -> Space:
    return Space.from_dict(data, shape)


def ask_plans(space: Space, n: int, seed: int = 0, sampler=None):
    study = optuna.create_study(sampler=sampler or optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        plan = space.sample(trial)
        out.append((trial, plan))
        study.tell(trial, 0.0)
    return study, out


# ----- sampling ---------------------------------------------------------------------------
def test_random_trials_give_valid_plans_that_rebuild_from_params():
    space = full_space()
    _, trials = ask_plans(space, 50)
    depths = set()
    for trial, plan in trials:
        resolved = plan.resolve(MINILM)
        assert len(resolved.layers) == trial.params["depth"] >= 4
        depths.add(trial.params["depth"])
        assert space.plan_from_params(trial.params) == plan
        assert Plan.from_json(plan.to_json()) == plan
        assert space.sample(optuna.trial.FixedTrial(trial.params)) == plan
        for i in resolved.layers:
            assert resolved.heads[i] in (4, 6, 8, 10, 12)
            assert resolved.ffn[i] in (384, 768, 1152, 1536)
            assert resolved.bits[i] in (32, 16, 8)
    assert depths == {4, 5, 6}


def test_conditional_params_follow_depth_distill_and_ffn():
    space = full_space()
    _, trials = ask_plans(space, 50, seed=1)
    for trial, plan in trials:
        p, d = trial.params, trial.params["depth"]
        assert {f"heads_L{i}" for i in range(d)} <= set(p)
        assert not {f"heads_L{i}" for i in range(d, 6)} & set(p)
        assert plan.layers == tuple(range(d))
        # dropped layers carry neutral values
        assert all(plan.heads[i] == 12 and plan.bits[i] == 32 and plan.rank[i] == 0 for i in range(d, 6))
        distilled = p["distill_steps"] > 0
        assert ("distill_lr" in p) == distilled and ("distill_losses" in p) == distilled
        assert plan.distill.steps == p["distill_steps"]
        if distilled:  # "embedding+hidden" -> ("embedding", "hidden")
            assert plan.distill.losses == tuple(p["distill_losses"].split("+"))
    drawn = {t.params.get("distill_losses") for t, _ in trials}
    assert "embedding+hidden" in drawn and len(drawn - {None}) >= 2  # the check above saw combined losses
    # rank is only asked for layers that keep FFN neurons
    space = space_of({"ffn": {"choices": [0, 768]}, "rank": {"choices": [0, 64], "tie": "per_layer"}})
    _, trials = ask_plans(space, 30)
    for trial, plan in trials:
        for i in range(6):
            assert (f"rank_L{i}" in trial.params) == (trial.params[f"ffn_L{i}"] > 0)
            if plan.ffn[i] == 0:
                assert plan.rank[i] == 0


def test_tpe_multivariate_group_copes_with_conditional_space():
    space = full_space()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # multivariate/group are experimental in Optuna
        sampler = optuna.samplers.TPESampler(multivariate=True, group=True, n_startup_trials=5, seed=0)
        _, trials = ask_plans(space, 12, sampler=sampler)
    for trial, plan in trials:
        assert space.plan_from_params(trial.params) == plan


@pytest.mark.parametrize("tie, names", [
    ("per_layer", [f"heads_L{i}" for i in range(6)]),
    ("shared", ["heads"]),
    ("block:2", ["heads_B0", "heads_B1", "heads_B2"]),
    ("block:4", ["heads_B0", "heads_B1"]),
])
def test_tie_names_and_tied_values(tie, names):
    space = space_of({"heads": {"choices": [4, 8, 12], "tie": tie}})
    assert list(space.distributions()) == names
    size = {"per_layer": 1, "shared": 6, "block:2": 2, "block:4": 4}[tie]
    _, trials = ask_plans(space, 20)
    for trial, plan in trials:
        assert sorted(trial.params) == sorted(names)
        for i in range(6):
            name = names[0] if tie == "shared" else names[i // size]
            assert plan.heads[i] == trial.params[name]


def test_single_choice_is_a_constant_not_a_param():
    space = space_of({"bits": [8], "heads": {"choices": [6, 12], "tie": "shared"}, "depth": {"min": 6}})
    assert list(space.distributions()) == ["heads"] and space.dimensions() == 1
    _, trials = ask_plans(space, 3)
    for trial, plan in trials:
        assert set(trial.params) == {"heads"}
        assert plan.bits == (8,) * 6 and plan.layers == tuple(range(6))


def test_empty_space_samples_the_unchanged_model():
    space = space_of({})
    assert space.dimensions() == 0 and space.uniform_plans() == [{}]
    _, [(trial, plan)] = ask_plans(space, 1)
    assert trial.params == {} and plan == Plan()


@pytest.mark.parametrize("drop, depth, kept", [
    ("top", 4, (0, 1, 2, 3)), ("bottom", 4, (2, 3, 4, 5)), ("spread", 4, (0, 2, 3, 5)),
    ("spread", 2, (0, 5)), ("spread", 6, (0, 1, 2, 3, 4, 5)), ("spread", 1, (5,)),
])
def test_which_layers_are_dropped(drop, depth, kept):
    space = space_of({"depth": {"min": 1, "drop": drop}, "heads": {"choices": [6, 12], "tie": "per_layer"}})
    assert space.kept_layers(depth) == kept
    params = {"depth": depth, **{f"heads_L{i}": 6 for i in kept}}
    plan = space.plan_from_params(params)
    assert plan.layers == kept and all(plan.heads[i] == 6 for i in kept)


# ----- GQA ----------------------------------------------------------------------------------
def test_gqa_heads_are_multiples_of_the_group():
    space = space_of({"heads": {"choices": [6, 8, 12, 16, 30, 32]}}, GQA)
    assert space.distributions()["heads_L0"].choices == (8, 12, 16, 32)
    assert any("dropped 6, 30" in line for line in space.describe())
    _, trials = ask_plans(space, 20)
    for _, plan in trials:
        plan.resolve(GQA)
        assert all(h % GQA.heads_per_group == 0 for h in plan.heads)
    fractions = space_of({"heads": {"fractions": [0.3, 0.5, 1.0]}}, GQA)
    assert fractions.distributions()["heads_L0"].choices == (8, 16, 32)
    with pytest.raises(SpaceError, match=r"space\.heads\.choices: none of 6, 10 .* KV group size 4"):
        space_of({"heads": {"choices": [6, 10]}}, GQA)


def test_fractions_use_the_model_shape():
    space = space_of({"heads": {"fractions": [0.5, 0.75, 1.0]}, "ffn": {"fractions": [0.25, 0.5, 1.0]}})
    dists = space.distributions()
    assert dists["heads_L0"].choices == (6, 9, 12) and dists["ffn_L5"].choices == (384, 768, 1536)


# ----- seeding and extremes ------------------------------------------------------------------
def test_uniform_plans_enqueue_with_the_baseline_first():
    space = full_space()
    seeds = space.uniform_plans()
    assert 3 <= len(seeds) <= 5 and len({tuple(sorted(s.items())) for s in seeds}) == len(seeds)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for params in seeds:
        study.enqueue_trial(params)
    plans = []
    for params in seeds:
        trial = study.ask()
        plans.append(space.sample(trial))
        assert trial.params == params
        study.tell(trial, 0.0)
    base = plans[0].resolve(MINILM)
    assert base.layers == tuple(range(6)) and base.heads == (12,) * 6 and base.ffn == (1536,) * 6
    assert base.bits == (32,) * 6 and base.rank == (0,) * 6 and base.distill.steps == 0
    assert plans[0] == space.largest_plan()
    assert {p.bits for p in plans} >= {(16,) * 6, (8,) * 6}
    assert any(p.heads == (8,) * 6 and p.ffn == (1152,) * 6 for p in plans)  # the middle choices


def test_smallest_and_largest_plans():
    space = full_space()
    small = space.smallest_plan()
    assert small.layers == (0, 1, 2, 3)
    assert all(small.heads[i] == 4 and small.ffn[i] == 384 and small.bits[i] == 8 for i in small.layers)
    assert all(small.rank[i] == 64 for i in small.layers)  # lowest real rank is the cheapest
    big = space.largest_plan()
    assert big.heads == (12,) * 6 and big.rank == (0,) * 6 and big.bits == (32,) * 6
    small.resolve(MINILM)


# ----- per-layer bits back to params (seeding mixed-precision plans) -------------------------
def test_params_for_bits_round_trip_per_layer_on_any_base():
    import random

    space = full_space()
    rng = random.Random(0)
    _, trials = ask_plans(space, 15)
    for trial, base_plan in trials:  # random bases: several depths, widths, ranks, distillation
        want = tuple(rng.choice(space.bits_choices()) for _ in range(6))
        params = space.params_for_bits(want, trial.params)
        plan = space.plan_from_params(params)
        kept = plan.layers
        assert kept == base_plan.layers
        assert all(plan.bits[i] == want[i] for i in kept)
        assert all(plan.bits[i] == 32 for i in range(6) if i not in kept)  # dropped: neutral
        assert plan == replace(base_plan, bits=plan.bits)  # only the bits changed
        assert set(params) == set(trial.params)  # exactly the names that plan uses
    mixed = (8, 16, 32, 8, 16, 8)
    params = space.params_for_bits(mixed)  # default base: the largest plan
    assert space.plan_from_params(params) == replace(space.largest_plan(), bits=mixed)
    study = optuna.create_study()
    study.enqueue_trial(params)
    trial = study.ask()
    assert space.sample(trial).bits == mixed and trial.params == params


@pytest.mark.parametrize("tie, size", [("per_layer", 1), ("block:2", 2), ("block:4", 4)])
def test_params_for_bits_rounds_up_and_takes_the_highest_of_a_tie_group(tie, size):
    import random

    space = space_of({"bits": {"choices": [16, 8, 4], "tie": tie}, "depth": {"min": 3}})
    choices = space.bits_choices()
    assert choices == (4, 8, 16)
    largest = space.uniform_plans()[0]
    bases = [space._params_with(lambda n, d=depth: d if n == "depth" else largest[n]) for depth in (6, 3)]
    rng = random.Random(1)
    for _ in range(20):
        want = tuple(rng.choice([2, 3, 4, 5, 6, 8, 12, 16]) for _ in range(6))
        for base in bases:
            plan = space.plan_from_params(space.params_for_bits(want, base))
            kept = plan.layers
            for i in kept:
                group = [j for j in kept if j // size == i // size]
                assert plan.bits[i] in choices and plan.bits[i] >= want[i]  # never fewer bits than asked
                assert plan.bits[i] == min(c for c in choices if c >= max(want[j] for j in group))
    with pytest.raises(ValueError, match="above every choice"):
        space.params_for_bits((32, 8, 8, 8, 8, 8))
    # a dropped layer's request is ignored (it is gone anyway)
    assert space.plan_from_params(space.params_for_bits((8, 8, 8, 32, 32, 32), bases[1])).bits[:3] == (8, 8, 8)


@pytest.mark.parametrize("data, reason", [
    ({"heads": {"choices": [6, 12]}}, "no bits dimension"),
    ({"bits": [8], "heads": {"choices": [6, 12]}}, "single choice"),
    ({"bits": {"choices": [32, 8], "tie": "shared"}}, "tied 'shared'"),
    ({"bits": {"choices": [32, 8], "tie": "block:6"}}, "one bit-width for all layers"),
])
def test_params_for_bits_is_none_when_bits_cannot_mix(data, reason):
    space = space_of(data)
    assert reason in space.why_no_mixed_bits()
    assert space.params_for_bits((8,) * 6) is None
    assert space_of({"bits": [32, 8]}).why_no_mixed_bits() is None


def test_default_space_for_both_shapes():
    assert parse_space_config(None) == default_space()
    for shape in (MINILM, GQA):
        space = Space.from_dict(None, shape)
        assert space.dimensions() > 0 and space.describe()
        _, trials = ask_plans(space, 10)
        for _, plan in trials:
            plan.resolve(shape)


# ----- fingerprint ---------------------------------------------------------------------------
def test_fingerprint_is_stable_and_tracks_changes():
    base = {"heads": {"choices": [6, 12]}, "bits": [32, 8], "depth": {"min": 4}}
    fp = space_of(base).fingerprint()
    assert fp == space_of(dict(base)).fingerprint()
    assert fp == space_of({**base, "heads": {"choices": [12, 6, 6]}}).fingerprint()  # order/duplicates
    assert fp == space_of({**base, "heads": {"fractions": [0.5, 1.0]}}).fingerprint()  # same choices
    changed = [
        {**base, "heads": {"choices": [6, 9, 12]}},
        {**base, "heads": {"choices": [6, 12], "tie": "shared"}},
        {**base, "depth": {"min": 4, "drop": "bottom"}},
        {**base, "depth": {"min": 3}},
        {**base, "bits": [32, 16]},
        {**base, "importance": ["magnitude", "fisher"]},
    ]
    fps = {space_of(c).fingerprint() for c in changed}
    assert fp not in fps and len(fps) == len(changed)
    other = ModelShape(num_layers=6, num_heads=12, num_kv_heads=12, intermediate_size=3072, hidden_size=768)
    assert space_of(base, other).fingerprint() != fp


# ----- validation ------------------------------------------------------------------------------
@pytest.mark.parametrize("data, pattern", [
    ({"heads": {"choises": [4]}}, r"^space\.heads\.choises: unknown key 'choises'; did you mean 'choices'\?"),
    ({"head": {"choices": [4]}}, r"^space\.head: unknown key 'head'; did you mean 'heads'\?"),
    ({"distill": {"step": [0]}}, r"^space\.distill\.step: unknown key .* did you mean 'steps'\?"),
    ({"heads": {"choices": []}}, r"^space\.heads\.choices: must list at least one choice"),
    ({"bits": {"choices": [32, 6]}}, r"^space\.bits\.choices\[1\]: 6 is not a supported bit-width; allowed: 32, 16, 8, 4, 3, 2"),
    ({"heads": {"choices": [4], "tie": "blok:2"}}, r"^space\.heads\.tie: tie must be per_layer, shared or block:N"),
    ({"heads": {"choices": [4], "tie": "block:0"}}, r"^space\.heads\.tie: "),
    ({"heads": {"choices": [4], "fractions": [0.5]}}, r"^space\.heads: give exactly one of choices"),
    ({"heads": {"fractions": [1.5]}}, r"^space\.heads\.fractions\[0\]: a fraction must be in \[0, 1\]"),
    ({"heads": {"choices": [-1]}}, r"^space\.heads\.choices\[0\]: "),
    ({"importance": ["magnitud"]}, r"^space\.importance\.choices\[0\]: .*did you mean 'magnitude'\?"),
    ({"distill": {"steps": [0], "losses": [["embeding"]]}}, r"^space\.distill\.losses\[0\]\[0\]: .*'embedding'"),
    ({"depth": {"min": 5, "max": 4}}, r"^space\.depth: max \(4\) must be >= min \(5\)"),
    ({"heads": {"choices": [4, 16]}}, r"^space\.heads\.choices\[1\]: 16 is more than the model's 12 attention heads"),
    ({"ffn": {"choices": [2048]}}, r"^space\.ffn\.choices\[0\]: 2048 is more than the model's 1536 FFN neurons"),
    ({"rank": {"choices": [512]}}, r"^space\.rank\.choices\[0\]: 512 exceeds min\(hidden 384, FFN 1536\)"),
    ({"depth": {"min": 9}}, r"^space\.depth\.min: 9 is more than the model's 6 layers"),
    ([1, 2], r"^space: must be a mapping"),
])
def test_validation_errors_are_one_clear_line(data, pattern):
    with pytest.raises(SpaceError, match=pattern) as info:
        space_of(data)
    assert "\n" not in str(info.value)


def test_format_validation_error_directly():
    with pytest.raises(ValidationError) as info:
        SpaceConfig.model_validate({"bits": {"choices": [32], "tei": "shared"}})
    assert format_validation_error(info.value).startswith("space.bits.tei: unknown key 'tei'; did you mean 'tie'?")
    assert format_validation_error(info.value, root="").startswith("bits.tei: ")


def test_yaml_float_strings_are_accepted_for_lr():
    # PyYAML reads `1e-4` (no dot) as a string; the space still takes it as a number
    data = yaml.safe_load("distill: {steps: [100], lr: [1e-4]}")
    space = space_of(data)
    assert space.plan_from_params({"distill_steps": 100}).distill.lr == 1e-4


def test_plan_from_params_rejects_foreign_params():
    space = space_of({"heads": {"choices": [6, 12], "tie": "shared"}})
    with pytest.raises(ValueError, match="lack 'heads'"):
        space.plan_from_params({})
    with pytest.raises(ValueError, match=r"heads = 7 is not in this space; allowed: 6, 12"):
        space.plan_from_params({"heads": 7})
    assert space.plan_from_params({"heads": 6, "other_param": 1}).heads == (6,) * 6


def test_importing_spaces_does_not_import_torch():
    code = ("import sys, slimformer.spaces; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_recovery_dimension_reaches_the_plan():
    space = Space.from_dict({"heads": {"choices": [6, 12]}, "recovery": ["none", "mask_tuning"]}, MINILM)
    assert "recovery" in space.distributions()
    seen = set()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(12):
        trial = study.ask()
        plan = space.sample(trial)
        assert plan.recovery == trial.params["recovery"]
        assert space.plan_from_params(trial.params) == plan
        seen.add(plan.recovery)
    assert seen == {"none", "mask_tuning"}
    with pytest.raises(SpaceError, match="recovery"):
        Space.from_dict({"recovery": ["mask_tune"]}, MINILM)


# ----- quant_method / smooth: searched only where a kept layer is quantized ------------------------
QUANT = {"depth": {"min": 1}, "bits": {"choices": [32, 16, 8], "tie": "per_layer"},
         "quant_method": ["gptq", "rtn"], "smooth": [0.5, 0]}


def test_quant_method_and_smooth_parse_with_shorthand():
    cfg = parse_space_config(QUANT)
    assert cfg.quant_method.choices == ["gptq", "rtn"] and cfg.smooth.choices == [0.5, 0.0]
    assert parse_space_config({"bits": [8], "quant_method": {"choices": ["rtn"]}}).quant_method.choices == ["rtn"]
    assert default_space().quant_method is None and default_space().smooth is None
    space = space_of(QUANT)
    assert space.distributions()["quant_method"].choices == ("rtn", "gptq")  # rtn first: the cheapest
    assert space.distributions()["smooth"].choices == (0.0, 0.5)
    assert sum("only in trials where a kept layer is quantized" in line for line in space.describe()) == 2


def test_quant_method_and_smooth_are_suggested_only_when_a_kept_layer_is_quantized():
    space = space_of(QUANT)
    unrounded = {"depth": 2, "bits_L0": 32, "bits_L1": 16}
    plan = space.plan_from_params(unrounded)  # no quant_method/smooth needed
    assert (plan.quant_method, plan.smooth) == ("rtn", 0.0)
    plan = space.sample(optuna.trial.FixedTrial(unrounded))
    assert (plan.quant_method, plan.smooth) == ("rtn", 0.0)
    dropped = {**unrounded, "bits_L2": 8}  # layer 2 is dropped at depth 2: its bits are never read
    assert space.plan_from_params(dropped).quant_method == "rtn"
    with pytest.raises(ValueError, match="lack 'quant_method'"):
        space.plan_from_params({**unrounded, "bits_L1": 8})
    plan = space.plan_from_params({**unrounded, "bits_L1": 8, "quant_method": "gptq", "smooth": 0.5})
    assert (plan.bits[1], plan.quant_method, plan.smooth) == (8, "gptq", 0.5)
    seen = set()
    for trial, plan in ask_plans(space, 30)[1]:
        quantized = any(plan.bits[i] == 8 for i in plan.layers)
        assert ("quant_method" in trial.params) == ("smooth" in trial.params) == quantized
        assert space.plan_from_params(trial.params) == plan
        seen.add((plan.quant_method, plan.smooth))
    assert {("gptq", 0.5), ("rtn", 0.0)} <= seen


def test_int8_weights_are_suggested_only_when_a_kept_layer_is_int8():
    space = space_of({"depth": {"min": 1}, "bits": {"choices": [32, 8, 4], "tie": "per_layer"},
                      "int8_weights": ["u8", "s8"]})
    assert space.distributions()["int8_weights"].choices == ("s8", "u8")  # s8 first: the default
    assert any("int8_weights: s8, u8" in line for line in space.describe())
    four_bit = {"depth": 1, "bits_L0": 4, "quant_method": "rtn"}
    assert space.plan_from_params(four_bit).int8_weights == "s8"  # no int8 layer: not needed
    with pytest.raises(ValueError, match="lack 'int8_weights'"):
        space.plan_from_params({"depth": 1, "bits_L0": 8})
    assert space.plan_from_params({"depth": 1, "bits_L0": 8, "int8_weights": "u8"}).int8_weights == "u8"
    seen = set()
    for trial, plan in ask_plans(space, 30)[1]:
        assert ("int8_weights" in trial.params) == any(plan.bits[i] == 8 for i in plan.layers)
        assert space.plan_from_params(trial.params) == plan
        seen.add(plan.int8_weights)
    assert seen == {"s8", "u8"}
    with pytest.raises(SpaceError, match="space.int8_weights: only searched where a layer is int8"):
        space_of({"bits": [32, 4], "int8_weights": ["s8", "u8"]})
    with pytest.raises(SpaceError, match="int8_weights"):
        parse_space_config({"bits": [8], "int8_weights": ["s4"]})
    with pytest.raises(ValueError, match="int8_weights must be one of s8, u8"):
        Plan(bits=8, int8_weights="u4")
    assert Plan.from_dict(Plan(bits=8, int8_weights="u8").to_dict()).int8_weights == "u8"


def test_attention_is_suggested_only_when_a_kept_layer_keeps_a_head():
    space = space_of({"depth": {"min": 1}, "heads": {"choices": [0, 12], "tie": "per_layer"},
                      "attention": ["eager", "sdpa"]})
    assert space.distributions()["attention"].choices == ("sdpa", "eager")  # the fixed order
    assert any("attention: sdpa, eager" in line for line in space.describe())
    assert space.plan_from_params({"depth": 1, "heads_L0": 0}).attention is None  # no head: the baseline's
    with pytest.raises(ValueError, match="lack 'attention'"):
        space.plan_from_params({"depth": 1, "heads_L0": 12})
    assert space.plan_from_params({"depth": 1, "heads_L0": 12, "attention": "eager"}).attention == "eager"
    seen = set()
    for trial, plan in ask_plans(space, 40)[1]:
        assert ("attention" in trial.params) == any(plan.heads[i] > 0 for i in plan.layers)
        assert (plan.attention is None) == ("attention" not in trial.params)
        assert space.plan_from_params(trial.params) == plan
        seen.add(plan.attention)
    assert seen == {None, "sdpa", "eager"}
    assert "attention" not in space_of({"heads": [6, 12]}).distributions()  # not asked for: not searched
    assert space_of({"attention": ["eager"]}).largest_plan().attention == "eager"  # one choice: a constant
    assert space_of({"attention": ["sdpa", "eager"]}).fingerprint() != space_of({"attention": ["sdpa"]}).fingerprint()
    with pytest.raises(SpaceError, match="attention"):
        parse_space_config({"attention": ["flash_attention_2"]})


def test_choice_plans_hold_every_choice_on_the_smallest_plan():
    space = space_of({**QUANT, "importance": ["magnitude", "fisher"], "recovery": ["mask_tuning"],
                      "distill": {"steps": [0, 50]}})
    plans = space.choice_plans()
    small = space.smallest_plan()
    assert small in plans and len(set(plans)) == len(plans)
    assert {p.importance for p in plans} == {"magnitude", "fisher"} and {p.recovery for p in plans} == {"mask_tuning"}
    assert {p.distill.steps for p in plans} == {0, 50}
    assert {p.layers for p in plans} == {tuple(range(d)) for d in range(1, 7)}  # every depth
    quantized = [p for p in plans if any(p.bits[i] == 8 for i in p.layers)]
    assert {(p.quant_method, p.smooth) for p in quantized} == {("rtn", 0.0), ("gptq", 0.0), ("rtn", 0.5)}
    one_change = [p for p in plans if p.layers == small.layers]  # apart from depth: one choice off the smallest
    assert all(sum(getattr(p, f) != getattr(small, f) for f in ("importance", "quant_method", "smooth", "distill"))
               <= 1 for p in one_change)


def test_quant_dims_take_the_cheapest_choice_in_seeded_plans():
    space = space_of(QUANT)
    assert space.largest_plan().quant_method == "rtn" and space.smallest_plan().smooth == 0.0
    int8 = [p for p in space.uniform_plans() if p.get("bits_L0") == 8]
    assert int8 and all((p["quant_method"], p["smooth"]) == ("rtn", 0.0) for p in int8)
    params = space.params_for_bits([8, 32, 32, 32, 32, 32])  # the largest plan quantizes nothing
    assert (params["quant_method"], params["smooth"]) == ("rtn", 0.0)
    assert space.plan_from_params(params).bits[0] == 8


@pytest.mark.parametrize("data, pattern", [
    ({"bits": [8], "smooth": [1.5]}, r"^space\.smooth\.choices\[0\]: a fraction must be in \[0, 1\]"),
    ({"bits": [8], "quant_method": ["awq"]}, r"^space\.quant_method\.choices\[0\]: must be 'rtn' or 'gptq'"),
    ({"bits": [8], "quant_method": []}, r"^space\.quant_method\.choices: must list at least one choice"),
    ({"bits": [32, 16], "smooth": [0, 0.5]}, r"^space\.smooth: only searched where a layer is quantized"),
    ({"quant_method": ["gptq"]}, r"^space\.quant_method: only searched where a layer is quantized"),
])
def test_bad_quant_dims_are_one_line(data, pattern):
    with pytest.raises(SpaceError, match=pattern) as info:
        space_of(data)
    assert "\n" not in str(info.value)


def test_fingerprint_tracks_quant_dims():
    base = {"bits": [32, 8]}
    fps = {space_of(d).fingerprint() for d in (base, {**base, "quant_method": ["rtn", "gptq"]},
                                                {**base, "smooth": [0, 0.5]}, {**base, "smooth": [0, 0.8]})}
    assert len(fps) == 4
    assert space_of({**base, "smooth": [0.5, 0]}).fingerprint() == space_of({**base, "smooth": [0, 0.5]}).fingerprint()
    assert space_of({**base, "quant_method": ["rtn", "gptq"]}).dimensions() == space_of(base).dimensions() + 1
