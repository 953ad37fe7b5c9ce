"""The reference models of a device profile: random BERTs cut by `apply_plan` from no layers to
full width, timed by `searcher.cost.microbench` (eager) and `searcher.cost.onnxbench` (ONNX
Runtime, OpenVINO) alike; the layer cost beyond the kernels is fitted from them."""

from __future__ import annotations

__all__ = ["layer_configs", "reference_plans", "DTYPE_BITS", "INT8_DTYPES", "OVERHEAD_LAYERS", "OVERHEAD_FFN"]

DTYPE_BITS = {"float32": 32, "bfloat16": 16, "int8": 8, "int8_static": 8}
INT8_DTYPES = ("int8", "int8_static")  # their layers run attention and the activation in the float precision
OVERHEAD_LAYERS, OVERHEAD_FFN = 4, 32


def layer_configs(hidden: int, head_dims) -> tuple[int, dict[str, tuple[int, int]]]:
    """(head_dim, {name: (heads, ffn)}) of the reference layers timed at width `hidden`:
    tiny (1 head, 32 neurons), bare (no attention), mid and full width."""
    dims = [x for x in head_dims if hidden % x == 0] or [hidden]
    d = min(dims, key=lambda x: (abs(hidden / 12 - x), x))
    full = max(1, hidden // d)
    return d, {"tiny": (1, OVERHEAD_FFN), "bare": (0, OVERHEAD_FFN), "mid": (max(1, full // 3), 2 * hidden),
               "full": (full, 4 * hidden)}


def reference_plans(hidden: int, head_dims, dtypes, tokens) -> tuple:
    """The random BERT of width `hidden` (OVERHEAD_LAYERS full-width layers, seed 0) and the plans
    of the reference models cut from it: no layers (embeddings + pooler), and per dtype (a number format:
    int8_static is bits 8 with int8_scheme static) each reference shape (int8 without `bare`: its attention
    glue runs in float32 anyway)."""
    import torch
    import transformers
    from slimformer.methods import Plan

    _, configs = layer_configs(hidden, head_dims)
    config = transformers.BertConfig(
        vocab_size=512, hidden_size=hidden, num_attention_heads=configs["full"][0], intermediate_size=4 * hidden,
        num_hidden_layers=OVERHEAD_LAYERS, max_position_embeddings=max(tokens) + 2, attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    base = transformers.BertModel(config).eval()
    plans = {("embed",): Plan(layers=[])}
    for dt in dtypes:
        for name, (heads, ffn) in configs.items():
            if not (dt in INT8_DTYPES and name == "bare"):
                plans[(name, dt)] = Plan(heads=heads, ffn=ffn, bits=DTYPE_BITS[dt],
                                         int8_scheme="static" if dt == "int8_static" else "dynamic")
    return base, plans
