"""Architecture adapters: where layers, heads, FFN neurons and their projections live.

Methods never hard-code module paths; they ask the adapter. Each adapter knows how to
slice one layer's attention heads and FFN neurons physically (transformers 5 has no
`prune_heads`), how to drop whole layers, and which module attributes depend on shapes.
"""

from __future__ import annotations

import torch
from torch import nn

from .plan import ModelShape

__all__ = ["Adapter", "get_adapter", "supported_model_types", "UnsupportedModelError", "NoAttention", "module_at",
           "set_module_at", "is_conv1d"]


class UnsupportedModelError(ValueError):
    """The model's architecture has no adapter."""


def module_at(root: nn.Module, path: str) -> nn.Module:
    """The submodule at a dotted path (`attention.self.query`)."""
    for part in path.split("."):
        root = getattr(root, part)
    return root


def set_module_at(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(module_at(root, parent) if parent else root, name, module)


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's Conv1D (a Linear with its weight stored transposed)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def _conv1d_as_linear(module: nn.Module) -> nn.Linear:
    """An nn.Linear computing the same as GPT-2's Conv1D (weight stored transposed)."""
    lin = nn.Linear(module.weight.shape[0], module.nf)
    with torch.no_grad():
        lin.weight.copy_(module.weight.t())
        lin.bias.copy_(module.bias)
    return lin


def weight_out_in(module: nn.Module) -> torch.Tensor:
    """The weight as [out_features, in_features], for nn.Linear and GPT-2's Conv1D."""
    return module.weight.t() if is_conv1d(module) else module.weight


def slice_out(module: nn.Module, keep: torch.Tensor) -> None:
    """Keep only output channels `keep` (in place, new smaller parameters)."""
    keep = keep.to(module.weight.device)
    with torch.no_grad():
        if is_conv1d(module):
            module.weight = nn.Parameter(module.weight[:, keep].clone())
            module.bias = nn.Parameter(module.bias[keep].clone())
            module.nf = len(keep)
            return
        module.weight = nn.Parameter(module.weight[keep].clone())
        if module.bias is not None:
            module.bias = nn.Parameter(module.bias[keep].clone())
        module.out_features = len(keep)


def slice_in(module: nn.Module, keep: torch.Tensor) -> None:
    """Keep only input channels `keep` (in place)."""
    keep = keep.to(module.weight.device)
    with torch.no_grad():
        if is_conv1d(module):
            module.weight = nn.Parameter(module.weight[keep].clone())
            return
        module.weight = nn.Parameter(module.weight[:, keep].clone())
        module.in_features = len(keep)


class NoAttention(nn.Module):
    """Stands in for an attention block whose heads were all pruned.

    Returns what the removed block would have returned for zero heads: the output
    projection's bias (or an empty tensor when the projection lives outside the block).
    """

    def __init__(self, out_features: int, bias: torch.Tensor | None):
        super().__init__()
        self.out_features = out_features
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    def forward(self, hidden_states, *args, **kwargs):
        out = hidden_states.new_zeros(*hidden_states.shape[:-1], self.out_features)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out, None


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
    def head_dim(self) -> int:
        cfg = self.config
        return getattr(cfg, "head_dim", None) or getattr(cfg, self.cfg_hidden) // getattr(cfg, self.cfg_heads)

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
                    set_module_at(layer, path, _conv1d_as_linear(module_at(layer, path)))
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


class ViTAdapter(Adapter):
    """ViT as laid out in transformers 5 (q/k/v/o_proj inside `attention`, `mlp.fc1/fc2`)."""

    model_types = ("vit",)
    layers_path = "layers"
    q, k, v, o = "attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj"
    attn_core = "attention"
    ffn_in = ("mlp.fc1",)
    ffn_out = "mlp.fc2"
    head_attrs = ("num_attention_heads",)


class DistilBertAdapter(Adapter):
    model_types = ("distilbert",)
    layers_path = "transformer.layer"
    q, k, v, o = "attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin"
    attn_core = "attention"
    ffn_in = ("ffn.lin1",)
    ffn_out = "ffn.lin2"
    head_attrs = ("n_heads",)
    cfg_layers, cfg_heads, cfg_ffn, cfg_hidden = "n_layers", "n_heads", "hidden_dim", "dim"


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


class LlamaAdapter(Adapter):
    """Llama-style decoders: separate q/k/v/o, gated MLP, grouped-query attention."""

    model_types = ("llama", "mistral", "qwen2", "qwen3")
    layers_path = "layers"
    q, k, v, o = "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"
    attn_core = "self_attn"
    ffn_in = ("mlp.gate_proj", "mlp.up_proj")
    ffn_out = "mlp.down_proj"
    cfg_kv_heads = "num_key_value_heads"

    def _kv_channels(self, keep: torch.Tensor) -> torch.Tensor:
        g = self.shape().heads_per_group
        groups = torch.unique(keep // g)
        if len(groups) * g != len(keep):
            raise ValueError(f"grouped-query attention: heads must be kept in whole groups of {g}")
        return self._head_channels(groups)


_ADAPTERS = (BertAdapter, ViTAdapter, DistilBertAdapter, GPT2Adapter, LlamaAdapter)


def supported_model_types() -> list[str]:
    return sorted(t for a in _ADAPTERS for t in a.model_types)


def get_adapter(model: nn.Module) -> Adapter:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for cls in _ADAPTERS:
        if model_type in cls.model_types:
            return cls(model)
    raise UnsupportedModelError(
        f"no adapter for model type {model_type!r}; supported: {', '.join(supported_model_types())}"
    )
