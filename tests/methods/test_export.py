"""save_compressed / load_compressed: safetensors + JSON only, a sha256 manifest checked on
load, and clear ExportErrors (ValueErrors) for damaged, missing or occupied directories."""

from __future__ import annotations

import json

import pytest
import torch
from slimformer.methods import ExportError, Plan, apply_plan, load_compressed, save_compressed

PLAN = Plan(heads=[2, 4, 1], ffn=[16, 64, 32], bits=[8, 16, 32])


@pytest.fixture(scope="module")
def bert(tiny_models):
    return tiny_models["bert"]


@pytest.fixture(scope="module")
def compressed(bert):
    return apply_plan(bert.build(), PLAN)


@pytest.fixture
def saved(compressed, tmp_path):
    return save_compressed(compressed, PLAN, tmp_path / "model")


def test_export_error_is_a_value_error():
    assert issubclass(ExportError, ValueError)


def test_only_safetensors_and_json(saved):
    names = sorted(p.name for p in saved.iterdir())
    assert names == ["manifest.json", "model.safetensors", "slimformer.json"]
    json.loads((saved / "slimformer.json").read_text())  # plain JSON, no pickle anywhere
    manifest = json.loads((saved / "manifest.json").read_text())
    assert sorted(manifest["files"]) == ["model.safetensors", "slimformer.json"]
    assert all(len(digest) == 64 for digest in manifest["files"].values())


def test_tokenizer_files_are_saved_and_listed(compressed, tmp_path):
    from transformers import BertTokenizerFast

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"]) + "\n")
    tok = BertTokenizerFast(vocab_file=str(vocab))
    out = save_compressed(compressed, None, tmp_path / "with_tok", tokenizer=tok, metrics={"quality": 0.5})
    manifest = json.loads((out / "manifest.json").read_text())
    files = sorted(p.name for p in out.iterdir())
    assert sorted(manifest["files"]) == [f for f in files if f != "manifest.json"]
    assert all(f.endswith((".safetensors", ".json", ".txt")) for f in files), files
    _, loaded_tok, _ = load_compressed(out)
    assert loaded_tok is not None
    assert loaded_tok("hello world")["input_ids"] == tok("hello world")["input_ids"]
    assert json.loads((out / "slimformer.json").read_text())["metrics"] == {"quality": 0.5}


def test_int8_layers_are_stored_as_int8(saved):
    from safetensors import safe_open

    with safe_open(str(saved / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
        int8 = [k for k in keys if k.endswith(".weight_int8")]
        assert int8 and all(f.get_tensor(k).dtype == torch.int8 for k in int8)
        assert all(k.startswith("bert.encoder.layer.0.") for k in int8)  # only the bits=8 layer
        assert len(int8) == 6  # q, k, v, attention output, intermediate, output
        bf16 = [k for k in keys if k.startswith("bert.encoder.layer.1.") and k.endswith(".weight")]
        assert bf16 and all(f.get_tensor(k).dtype == torch.bfloat16 for k in bf16)
        fp32 = [k for k in keys if k.startswith("bert.encoder.layer.2.") and k.endswith(".weight")]
        assert fp32 and all(f.get_tensor(k).dtype == torch.float32 for k in fp32)


def test_load_reproduces_outputs(bert, compressed, saved):
    from slimformer.methods import get_adapter

    model, tokenizer, plan = load_compressed(saved)
    inputs = bert.inputs()
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, compressed(**inputs).logits)
    assert plan == PLAN.resolve(get_adapter(bert.build()).shape())
    assert tokenizer is None


def test_one_changed_byte_is_detected(saved):
    path = saved / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ExportError, match="sha256"):
        load_compressed(saved)


def test_edited_metadata_is_detected(saved):
    meta = saved / "slimformer.json"
    meta.write_text(meta.read_text().replace('"heads"', '"heads" ', 1))
    with pytest.raises(ExportError, match="sha256"):
        load_compressed(saved)


def test_missing_manifest(saved):
    (saved / "manifest.json").unlink()
    with pytest.raises(ExportError, match="manifest"):
        load_compressed(saved)


def test_missing_listed_file(saved):
    (saved / "model.safetensors").unlink()
    with pytest.raises(ExportError, match="model.safetensors"):
        load_compressed(saved)


def test_missing_directory(tmp_path):
    with pytest.raises(ExportError, match="not found"):
        load_compressed(tmp_path / "nowhere")


def test_non_empty_directory_needs_force(compressed, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not empty"):
        save_compressed(compressed, PLAN, out)
    save_compressed(compressed, PLAN, out, force=True)
    load_compressed(out)


def test_overwrite_existing_export_with_force(compressed, saved):
    with pytest.raises(ExportError):
        save_compressed(compressed, PLAN, saved)
    save_compressed(compressed, PLAN, saved, force=True)
    load_compressed(saved)


def test_target_is_a_file(compressed, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ExportError, match="not a directory"):
        save_compressed(compressed, PLAN, target, force=True)


def test_uncompressed_model_is_refused(bert, tmp_path):
    with pytest.raises(ExportError, match="apply_plan"):
        save_compressed(bert.build(), None, tmp_path / "out")


def test_mismatched_plan_is_refused(compressed, tmp_path):
    with pytest.raises(ExportError, match="plan"):
        save_compressed(compressed, Plan(importance="fisher"), tmp_path / "out")


def test_tied_weights_are_stored_once_and_restored(tiny_models, tmp_path):
    tiny = tiny_models["gpt2"]
    model = apply_plan(tiny.build(), Plan(ffn=32))
    out = save_compressed(model, None, tmp_path / "gpt2")
    loaded, _, _ = load_compressed(out)
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()
    with torch.no_grad():
        assert torch.equal(loaded(**tiny.inputs()).logits, model(**tiny.inputs()).logits)
