"""Adapters own their architecture's facts: registered with `@register_adapter`, found by model
type, checked at registration, true of the real models, and the only place smoothing, mask
tuning and the cost model learn them from."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from slimformer.methods import Plan, apply_plan
from slimformer.methods import adapters as adapter_module
from slimformer.methods.adapters import (
    Adapter,
    UnsupportedModelError,
    adapter_class,
    get_adapter,
    register_adapter,
    registered_adapters,
    supported_model_types,
)
from slimformer.methods.smooth import InputScale, smooth_model
from slimformer.methods.surgery import module_at, weight_out_in
from slimformer.searcher.cost.costmodel import model_facts

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[2]
GPT2_CONFIG = {"model_type": "tiny-decoder", "n_embd": 32, "n_layer": 2, "n_head": 4, "n_inner": 64,
               "vocab_size": 100, "n_positions": 64}


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry for the test (registrations are undone afterwards)."""
    monkeypatch.setattr(adapter_module, "ADAPTERS", dict(adapter_module.ADAPTERS))
    return adapter_module.ADAPTERS


class _Model:  # anything with a config is enough for get_adapter
    def __init__(self, config):
        self.config = config


def test_a_new_adapter_is_found_by_its_model_type(registry):
    from types import SimpleNamespace

    with pytest.raises(UnsupportedModelError, match="tiny-decoder"):
        adapter_class("tiny-decoder")

    @register_adapter
    class TinyDecoderAdapter(adapter_module.GPT2Adapter):
        model_types = ("tiny-decoder",)

        def linear_biases(self):
            return False, True, False

    model = _Model(SimpleNamespace(**GPT2_CONFIG))
    assert type(get_adapter(model)) is TinyDecoderAdapter
    assert adapter_class("tiny-decoder") is TinyDecoderAdapter
    assert "tiny-decoder" in supported_model_types()
    assert TinyDecoderAdapter in registered_adapters()
    facts = model_facts(GPT2_CONFIG)  # the cost model asks the new adapter
    assert (facts.qkv_bias, facts.o_bias, facts.ffn_bias) == (False, True, False)
    assert facts.embed_params == (100 + 64) * 32 + 2 * 32


def test_registration_checks_the_declared_facts(registry):
    class NoNorms(adapter_module.GPT2Adapter):  # pre-norm, but which norms feed the Linears?
        model_types = ("no-norms",)
        attn_norm = ffn_norm = None

    class NormsButPostNorm(adapter_module.GPT2Adapter):
        model_types = ("norms-post",)
        post_norm = True

    class NoEmbeddings(Adapter):
        model_types = ("no-embeddings",)
        layers_path, qkv_fused, o, attn_core = "h", "attn.c_attn", "attn.c_proj", "attn"
        ffn_in, ffn_out, attn_norm, ffn_norm = ("mlp.c_fc",), "mlp.c_proj", "ln_1", "ln_2"

    class SecondGPT2(adapter_module.GPT2Adapter):
        pass

    for cls, message in [(NoNorms, "attn_norm and ffn_norm"), (NormsButPostNorm, "attn_norm and ffn_norm"),
                         (NoEmbeddings, "embedding_params")]:
        with pytest.raises(TypeError, match=message):
            register_adapter(cls)
    with pytest.raises(ValueError, match="already registered"):
        register_adapter(SecondGPT2)
    with pytest.raises(TypeError, match="Adapter subclass"):
        register_adapter(object)
    assert not {"no-norms", "norms-post", "no-embeddings"} & set(registry)
    assert registry["gpt2"] is adapter_module.GPT2Adapter


def test_the_declared_facts_are_true_of_the_real_model(tiny):
    """Norm groups name a norm and the Linears reading it, post_norm and the biases are the model's."""
    model = tiny.build()
    adapter = get_adapter(model)
    assert adapter.post_norm == tiny.post_norm
    layer = adapter.layers()[0]
    groups = adapter.norm_groups()
    assert [paths for _, paths in groups][1] == tuple(adapter.ffn_in)
    for norm, paths in groups:
        assert (norm is None) == tiny.post_norm
        if norm is not None:
            assert module_at(layer, norm).weight.shape == (tiny.hidden,)
        for p in paths:
            assert weight_out_in(module_at(layer, p)).shape[1] == tiny.hidden
    qkv, o, ffn = adapter.linear_biases()
    attn_linears = [module_at(layer, p) for p in groups[0][1]]
    assert (qkv, ffn) == (tiny.qkv_bias, tiny.ffn_bias)
    assert all((m.bias is not None) == qkv for m in attn_linears)
    assert (module_at(layer, adapter.o).bias is not None) == o
    assert all((module_at(layer, p).bias is not None) == ffn for p in (*adapter.ffn_in, adapter.ffn_out))


def _post_norm_gpt2(registry):
    """GPT-2 re-registered as if it were post-norm (no norm to fold into)."""
    del registry["gpt2"]

    @register_adapter
    class PostNormGPT2(adapter_module.GPT2Adapter):
        post_norm, attn_norm, ffn_norm = True, None, None

    return PostNormGPT2


def test_smoothing_takes_the_post_norm_path_from_the_adapter(tiny_models, registry):
    tiny = tiny_models["gpt2"]
    base, inputs, calib = tiny.build(), tiny.inputs(), tiny.calibration()
    folded = copy.deepcopy(base)
    assert smooth_model(folded, [0, 1], 0.5, calib) == 4
    assert not any(isinstance(m, InputScale) for m in folded.modules())  # pre-norm: folded into ln_1/ln_2
    _post_norm_gpt2(registry)
    scaled, logs = copy.deepcopy(base), []
    assert smooth_model(scaled, [0, 1], 0.5, calib, log=logs.append) == 4
    assert sum(isinstance(m, InputScale) for m in scaled.modules()) == 4  # c_attn and c_fc of 2 layers
    assert any("post-norm" in m for m in logs)
    with torch.no_grad():
        want = base(**inputs).logits
        assert (scaled(**inputs).logits - want).abs().max().item() < 1e-4
        assert (folded(**inputs).logits - want).abs().max().item() < 1e-4


def test_mask_tuning_takes_the_residual_from_the_adapter(tiny_models, registry):
    """Post-norm mask tuning takes the FFN residual at the FFN's input (ln_2's output in GPT-2),
    pre-norm from the layer output: the same in layer 0 (no drift yet), different after it."""
    tiny = tiny_models["gpt2"]
    base, calib = tiny.build(), tiny.calibration()
    plan = Plan(heads=4, ffn=32, recovery="mask_tuning")  # only FFN neurons are tuned
    pre = apply_plan(base, plan, calib)
    _post_norm_gpt2(registry)
    post = apply_plan(base, plan, calib)
    pre_w, post_w = ([layer.mlp.c_proj.weight for layer in m.transformer.h] for m in (pre, post))
    assert torch.allclose(pre_w[0], post_w[0], atol=1e-6)
    assert not torch.allclose(pre_w[2], post_w[2], atol=1e-4)


def test_no_architecture_table_outside_the_adapters():
    """Only methods/adapters.py names a concrete adapter class or compares with a model type
    (`== "gpt2"`, `in ("llama", ...)`)."""
    names = {cls.__name__ for cls in registered_adapters()}
    types = "|".join(re.escape(t) for t in sorted(supported_model_types(), key=len, reverse=True))
    quoted = re.compile(rf"(==|!=|\bin)\s*[(\[{{]?\s*[\"']({types})[\"']")
    offenders = []
    for folder in ("methods", "searcher", "spaces"):
        for f in sorted((ROOT / folder).rglob("*.py")):
            if f == ROOT / "methods" / "adapters.py":
                continue
            text = f.read_text()
            offenders += [f"{f.relative_to(ROOT)}: {n}" for n in names if re.search(rf"\b{n}\b", text)]
            offenders += [f"{f.relative_to(ROOT)}: model type {m.group(0)}" for m in quoted.finditer(text)]
    assert not offenders
