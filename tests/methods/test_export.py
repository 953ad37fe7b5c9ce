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


# ----- untrusted folders and paths ------------------------------------------------------------
def _rewrite_manifest(folder, files):
    import hashlib

    manifest = {"format_version": 1, "files": {
        name: hashlib.sha256((folder / name).read_bytes()).hexdigest() if (folder / name).is_file() else "0" * 64
        for name in files}}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_planted_symlink_is_replaced_not_written_through(compressed, saved, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("do not touch")
    (saved / "model.safetensors").unlink()
    (saved / "model.safetensors").symlink_to(victim)
    save_compressed(compressed, PLAN, saved, force=True)
    assert victim.read_text() == "do not touch"
    assert not (saved / "model.safetensors").is_symlink()
    load_compressed(saved)


def test_manifest_paths_outside_the_folder_are_refused(saved, tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    for name in ("../outside.json", str(outside), ".hidden", "sub/file"):
        _rewrite_manifest(saved, ["model.safetensors", "slimformer.json", name])
        with pytest.raises(ExportError, match="not allowed"):
            load_compressed(saved)


def test_symlinked_listed_file_is_refused(saved, tmp_path):
    real = tmp_path / "weights.bin"
    real.write_bytes((saved / "model.safetensors").read_bytes())
    (saved / "model.safetensors").unlink()
    (saved / "model.safetensors").symlink_to(real)
    with pytest.raises(ExportError, match="not allowed"):
        load_compressed(saved)


def test_unlisted_files_are_never_read(compressed, tmp_path, tiny_models):
    from slimformer.searcher.problem.models import load_tokenizer

    out = save_compressed(compressed, PLAN, tmp_path / "with-tok", tokenizer=load_tokenizer("minilm-l6"))
    # an unlisted file that would change the tokenizer if the folder were read as a whole
    (out / "added_tokens.json").write_text(json.dumps({"zzzplanted": 30522}))
    (out / "special_tokens_map.json.bak").write_text("junk")
    _, tok, _ = load_compressed(out)
    assert "zzzplanted" not in tok.get_vocab()


def test_hand_edited_metadata_is_a_clear_error(saved):
    meta = json.loads((saved / "slimformer.json").read_text())
    for bad in ({"model_class": "os.system"}, {"model_class": ["x"]}, {"plan": {"heads": "all"}},
                {"original_config": {"model_type": "bert", "hidden_size": "big"}}, {"int8_modules": ["nope"]}):
        (saved / "slimformer.json").write_text(json.dumps({**meta, **bad}))
        _rewrite_manifest(saved, ["model.safetensors", "slimformer.json"])
        with pytest.raises(ExportError):
            load_compressed(saved)


def test_failed_export_leaves_nothing_behind(compressed, tmp_path, monkeypatch):
    import slimformer.methods.export as export

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "move_into", boom)
    with pytest.raises(OSError):
        save_compressed(compressed, PLAN, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no half-written folder, no staging left
