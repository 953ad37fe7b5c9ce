"""Architecture adapters: where layers, heads, FFN neurons and their projections live.

Methods and the cost model never hard-code module paths or branch on a model type; they ask
the adapter. Each adapter knows how to slice one layer's attention heads and FFN neurons
physically (transformers 5 has no `prune_heads`), how to drop whole layers, which module
attributes depend on shapes, and its architecture's facts: pre- or post-norm and which norm
feeds which Linears (SmoothQuant, mask tuning), and the biases, norms and embeddings the cost
model counts from a config. An architecture is one `Adapter` subclass with `@register_adapter`.
"""

from __future__ import annotations

import torch
from torch import nn

from .plan import ModelShape
from .surgery import (
    NoAttention,
    conv1d_as_linear,
    is_conv1d,
    module_at,
    set_module_at,
    slice_in,
    slice_out,
    weight_out_in,
)

__all__ = ["Adapter", "register_adapter", "registered_adapters", "adapter_class", "get_adapter",
           "supported_model_types", "UnsupportedModelError", "ADAPTERS"]

ADAPTERS: dict[str, type] = {}  # model type -> adapter class, filled by @register_adapter only


class UnsupportedModelError(ValueError):
    """The model's architecture has no adapter."""


class Adapter:
    """Base adapter; subclasses fill in the module paths of their architecture."""

    model_types: tuple[str, ...] = ()
    layers_path = ""
    q = k = v = o = ""  # separate projections (paths relative to a layer)
    qkv_fused = ""  # GPT-2's fused c_attn
    attn_core = ""  # block replaced by NoAttention when a layer keeps 0 heads
    o_inside_core = True
    ffn_in = ()
    ffn_out = ""
    head_attrs = ()  # attributes on attn_core holding the head count
    all_head_attrs = ()  # attributes holding heads * head_dim
    cfg_layers = "num_hidden_layers"
    cfg_heads = "num_attention_heads"
    cfg_kv_heads = ""
    cfg_ffn = "intermediate_size"
    cfg_hidden = "hidden_size"
    # architecture facts (read by methods.smooth, methods.masktune and the cost model)
    post_norm = False  # LayerNorm after the residual add: its output is also the next residual
    attn_norm: str | None = None  # pre-norm: the norm whose output feeds q/k/v (None when post-norm)
    ffn_norm: str | None = None  # pre-norm: the norm whose output feeds the FFN input projections
    has_pooler = False  # the base model ends in a pooler (dense h x h + bias) when asked for one

    def __init__(self, model: nn.Module):
        self.model = model

    # ----- structure ----------------------------------------------------------------
    @property
    def config(self):
        return self.model.config

    @property
    def backbone(self) -> nn.Module:
        return self.model.base_model

    def layers(self) -> nn.ModuleList:
        return module_at(self.backbone, self.layers_path)

    def shape(self) -> ModelShape:
        cfg = self.config
        heads = getattr(cfg, self.cfg_heads)
        kv = getattr(cfg, self.cfg_kv_heads, None) if self.cfg_kv_heads else None
        ffn = getattr(cfg, self.cfg_ffn, None) or 4 * getattr(cfg, self.cfg_hidden)
        return ModelShape(
            num_layers=getattr(cfg, self.cfg_layers),
            num_heads=heads,
            num_kv_heads=kv or heads,
            intermediate_size=ffn,
            hidden_size=getattr(cfg, self.cfg_hidden),
        )

    @property
    def hidden_size(self) -> int:
        return getattr(self.config, self.cfg_hidden)

    @property
    def head_dim(self) -> int:
        cfg = self.config
        return getattr(cfg, "head_dim", None) or getattr(cfg, self.cfg_hidden) // getattr(cfg, self.cfg_heads)

    # ----- architecture facts -------------------------------------------------------
    def norm_groups(self) -> tuple[tuple[str | None, tuple[str, ...]], ...]:
        """(norm path or None when post-norm, the Linears reading its output) per sub-layer,
        relative to a layer: the groups SmoothQuant scales together."""
        qkv = (self.qkv_fused,) if self.qkv_fused else (self.q, self.k, self.v)
        return (self.attn_norm, qkv), (self.ffn_norm, tuple(self.ffn_in))

    def linear_biases(self) -> tuple[bool, bool, bool]:
        """Whether the q/k/v, the output and the FFN projections carry a bias (from the config)."""
        return True, True, True

    def norm_params(self) -> int:
        """Parameters of one layer's norms: two LayerNorms (weight and bias) unless overridden."""
        return 4 * self.hidden_size

    def embedding_params(self) -> int:
        """Parameters outside the layers (embeddings and a final norm; no pooler, no head), from the config."""
        raise NotImplementedError(f"{type(self).__name__} does not count its embedding parameters")

    def has_attention(self, layer: nn.Module) -> bool:
        return not isinstance(module_at(layer, self.attn_core), NoAttention)

    def linear(self, layer: nn.Module, path: str) -> nn.Module:
        return module_at(layer, path)

    def attention_weights(self, layer: nn.Module) -> tuple[torch.Tensor, ...]:
        """(Wq, Wk, Wv, Wo) as [out, in] matrices."""
        if self.qkv_fused:
            w = weight_out_in(module_at(layer, self.qkv_fused))
            n = w.shape[0] // 3
            wq, wk, wv = w[:n], w[n : 2 * n], w[2 * n :]
        else:
            wq, wk, wv = (weight_out_in(module_at(layer, p)) for p in (self.q, self.k, self.v))
        return wq, wk, wv, weight_out_in(module_at(layer, self.o))

    def ffn_modules(self, layer: nn.Module) -> tuple[list[nn.Module], nn.Module]:
        return [module_at(layer, p) for p in self.ffn_in], module_at(layer, self.ffn_out)

    def num_heads(self, layer: nn.Module) -> int:
        if not self.has_attention(layer):
            return 0
        return weight_out_in(module_at(layer, self.o)).shape[1] // self.head_dim

    def num_neurons(self, layer: nn.Module) -> int:
        return weight_out_in(module_at(layer, self.ffn_out)).shape[1]

    # ----- physical pruning ---------------------------------------------------------
    def _head_channels(self, heads: torch.Tensor) -> torch.Tensor:
        d = self.head_dim
        return (heads[:, None] * d + torch.arange(d)[None, :]).reshape(-1)

    def prune_heads(self, layer: nn.Module, keep: torch.Tensor) -> None:
        """Keep the query heads `keep` (sorted indices) of this layer."""
        keep = torch.as_tensor(sorted(int(i) for i in keep), dtype=torch.long)
        if len(keep) == 0:
            self._remove_attention(layer)
            return
        ch = self._head_channels(keep)
        if self.qkv_fused:
            fused = module_at(layer, self.qkv_fused)
            n = weight_out_in(fused).shape[0] // 3
            slice_out(fused, torch.cat([ch, ch + n, ch + 2 * n]))
        else:
            slice_out(module_at(layer, self.q), ch)
            kv_ch = self._kv_channels(keep)
            slice_out(module_at(layer, self.k), kv_ch)
            slice_out(module_at(layer, self.v), kv_ch)
        slice_in(module_at(layer, self.o), ch)
        self._set_head_attrs(layer, len(keep))

    def _kv_channels(self, keep: torch.Tensor) -> torch.Tensor:
        return self._head_channels(keep)

    def _set_head_attrs(self, layer: nn.Module, n: int) -> None:
        core = module_at(layer, self.attn_core)
        for attr in self.head_attrs:
            setattr(core, attr, n)
        for attr in self.all_head_attrs:
            setattr(core, attr, n * self.head_dim)

    def _remove_attention(self, layer: nn.Module) -> None:
        o = module_at(layer, self.o)
        if self.o_inside_core:
            width = weight_out_in(o).shape[0]
            set_module_at(layer, self.attn_core, NoAttention(width, o.bias))
        else:
            set_module_at(layer, self.attn_core, NoAttention(0, None))
            slice_in(o, torch.zeros(0, dtype=torch.long))

    def prune_ffn(self, layer: nn.Module, keep: torch.Tensor) -> None:
        keep = torch.as_tensor(sorted(int(i) for i in keep), dtype=torch.long)
        if len(keep) == 0:  # GPT-2's Conv1D cannot run with 0 inputs (x.view(-1, 0)): use nn.Linear
            for path in self.ffn_in + (self.ffn_out,):
                if is_conv1d(module_at(layer, path)):
                    set_module_at(layer, path, conv1d_as_linear(module_at(layer, path)))
        ins, out = self.ffn_modules(layer)
        for m in ins:
            slice_out(m, keep)
        slice_in(out, keep)

    def keep_layers(self, keep: list[int]) -> None:
        """Keep only the layers with these (current) indices, renumbering layer_idx."""
        layers = self.layers()
        kept = nn.ModuleList([layers[i] for i in keep])
        set_module_at(self.backbone, self.layers_path, kept)
        for new_idx, layer in enumerate(kept):
            for module in layer.modules():
                if hasattr(module, "layer_idx"):
                    module.layer_idx = new_idx
        setattr(self.config, self.cfg_layers, len(keep))
        layer_types = getattr(self.config, "layer_types", None)
        if isinstance(layer_types, (list, tuple)) and len(layer_types) == len(layers):
            self.config.layer_types = [layer_types[i] for i in keep]


def _cfg_or(config, name: str, default):
    """A config field, `default` when it is missing or falsy."""
    return getattr(config, name, default) or default


def register_adapter(cls: type) -> type:
    """Class decorator: the adapter of `cls.model_types`. Checks that it declares its facts."""
    if not (isinstance(cls, type) and issubclass(cls, Adapter)):
        raise TypeError(f"register_adapter takes an Adapter subclass, got {cls!r}")
    missing = [a for a in ("model_types", "layers_path", "o", "attn_core", "ffn_in", "ffn_out") if not getattr(cls, a)]
    if not (cls.qkv_fused or (cls.q and cls.k and cls.v)):
        missing.append("q/k/v or qkv_fused")
    if not isinstance(cls.post_norm, bool):
        missing.append("post_norm (a bool)")
    elif len([n for n in (cls.attn_norm, cls.ffn_norm) if n]) != (0 if cls.post_norm else 2):
        missing.append("attn_norm and ffn_norm when pre-norm (neither when post-norm)")
    if cls.embedding_params is Adapter.embedding_params:
        missing.append("embedding_params")
    if missing:
        raise TypeError(f"adapter {cls.__name__} does not declare: {', '.join(missing)}")
    taken = {t: ADAPTERS[t].__name__ for t in cls.model_types if t in ADAPTERS and ADAPTERS[t] is not cls}
    if taken:
        raise ValueError(f"adapter {cls.__name__}: model types already registered: {taken}")
    for t in cls.model_types:
        ADAPTERS[t] = cls
    return cls


@register_adapter
class BertAdapter(Adapter):
    model_types = ("bert", "roberta", "xlm-roberta", "camembert", "electra")
    layers_path = "encoder.layer"
    q, k, v = "attention.self.query", "attention.self.key", "attention.self.value"
    o = "attention.output.dense"
    attn_core = "attention.self"
    o_inside_core = False
    ffn_in = ("intermediate.dense",)
    ffn_out = "output.dense"
    head_attrs = ("num_attention_heads",)
    all_head_attrs = ("all_head_size",)
    post_norm, has_pooler = True, True

    def embedding_params(self) -> int:
        cfg, h = self.config, self.hidden_size
        e = _cfg_or(cfg, "embedding_size", h)  # ELECTRA: embeddings narrower than the layers, projected up
        types = getattr(cfg, "type_vocab_size", 2) or 0
        tables = (_cfg_or(cfg, "vocab_size", 0) + _cfg_or(cfg, "max_position_embeddings", 512) + types) * e + 2 * e
        return tables + (e * h + h if e != h else 0)


@register_adapter
class ViTAdapter(Adapter):
    """ViT as laid out in transformers 5 (q/k/v/o_proj inside `attention`, `mlp.fc1/fc2`)."""

    model_types = ("vit",)
    layers_path = "layers"
    q, k, v, o = "attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj"
    attn_core = "attention"
    ffn_in = ("mlp.fc1",)
    ffn_out = "mlp.fc2"
    head_attrs = ("num_attention_heads",)
    attn_norm, ffn_norm, has_pooler = "layernorm_before", "layernorm_after", True

    def linear_biases(self) -> tuple[bool, bool, bool]:
        return bool(getattr(self.config, "qkv_bias", True)), True, True

    def embedding_params(self) -> int:  # patch projection (+ bias), [CLS], positions, final LayerNorm
        cfg, h = self.config, self.hidden_size
        p = _cfg_or(cfg, "patch_size", 16)
        patches = (_cfg_or(cfg, "image_size", 224) // p) ** 2
        return _cfg_or(cfg, "num_channels", 3) * p * p * h + h + h + (patches + 1) * h + 2 * h


@register_adapter
class DistilBertAdapter(Adapter):
    model_types = ("distilbert",)
    layers_path = "transformer.layer"
    q, k, v, o = "attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin"
    attn_core = "attention"
    ffn_in = ("ffn.lin1",)
    ffn_out = "ffn.lin2"
    head_attrs = ("n_heads",)
    cfg_layers, cfg_heads, cfg_ffn, cfg_hidden = "n_layers", "n_heads", "hidden_dim", "dim"
    post_norm = True

    def embedding_params(self) -> int:
        cfg, h = self.config, self.hidden_size
        return (_cfg_or(cfg, "vocab_size", 0) + _cfg_or(cfg, "max_position_embeddings", 512)) * h + 2 * h


@register_adapter
class GPT2Adapter(Adapter):
    model_types = ("gpt2",)
    layers_path = "h"
    qkv_fused = "attn.c_attn"
    o = "attn.c_proj"
    attn_core = "attn"
    ffn_in = ("mlp.c_fc",)
    ffn_out = "mlp.c_proj"
    head_attrs = ("num_heads",)
    all_head_attrs = ("split_size",)
    cfg_layers, cfg_heads, cfg_ffn, cfg_hidden = "n_layer", "n_head", "n_inner", "n_embd"
    attn_norm, ffn_norm = "ln_1", "ln_2"

    def embedding_params(self) -> int:  # token and position embeddings, final LayerNorm
        cfg, h = self.config, self.hidden_size
        return (_cfg_or(cfg, "vocab_size", 0) + _cfg_or(cfg, "n_positions", 1024)) * h + 2 * h


@register_adapter
class LlamaAdapter(Adapter):
    """Llama-style decoders: separate q/k/v/o, gated MLP, grouped-query attention, RMSNorms."""

    model_types = ("llama", "mistral", "qwen3")
    layers_path = "layers"
    q, k, v, o = "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"
    attn_core = "self_attn"
    ffn_in = ("mlp.gate_proj", "mlp.up_proj")
    ffn_out = "mlp.down_proj"
    cfg_kv_heads = "num_key_value_heads"
    attn_norm, ffn_norm = "input_layernorm", "post_attention_layernorm"

    def linear_biases(self) -> tuple[bool, bool, bool]:
        bias = bool(_cfg_or(self.config, "attention_bias", False))
        return bias, bias, bool(_cfg_or(self.config, "mlp_bias", False))

    def norm_params(self) -> int:  # two RMSNorms (weight only)
        return 2 * self.hidden_size

    def embedding_params(self) -> int:  # token embeddings, final RMSNorm
        return _cfg_or(self.config, "vocab_size", 0) * self.hidden_size + self.hidden_size

    def _kv_channels(self, keep: torch.Tensor) -> torch.Tensor:
        g = self.shape().heads_per_group
        groups = torch.unique(keep // g)
        if len(groups) * g != len(keep):
            raise ValueError(f"grouped-query attention: heads must be kept in whole groups of {g}")
        return self._head_channels(groups)


@register_adapter
class Qwen2Adapter(LlamaAdapter):
    """Qwen2: a Llama-style decoder whose q/k/v always carry a bias."""

    model_types = ("qwen2",)

    def linear_biases(self) -> tuple[bool, bool, bool]:
        _, o, ffn = super().linear_biases()
        return True, o, ffn


def registered_adapters() -> list[type]:
    """The registered adapter classes, in registration order."""
    return list(dict.fromkeys(ADAPTERS.values()))


def supported_model_types() -> list[str]:
    return sorted(ADAPTERS)


def adapter_class(model_type: str | None) -> type:
    """The adapter class registered for `model_type` (UnsupportedModelError when none is)."""
    cls = ADAPTERS.get(model_type)
    if cls is None:
        raise UnsupportedModelError(
            f"no adapter for model type {model_type!r}; supported: {', '.join(supported_model_types())}")
    return cls


def get_adapter(model: nn.Module) -> Adapter:
    """The adapter of `model` (anything with a `.config` carrying `model_type`)."""
    return adapter_class(getattr(getattr(model, "config", None), "model_type", None))(model)
