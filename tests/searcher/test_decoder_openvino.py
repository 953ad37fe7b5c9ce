"""OpenVINO as decoder users run it (searcher/devices/openvino_lm.py): a stateful IR with the KV cache
inside, greedy tokens equal to PyTorch's at float32, real int8/int4 weights per layer from a plan's bits,
full-sequence logits for scoring, and the folder openvino_genai.LLMPipeline opens."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("openvino")
pytest.importorskip("nncf")


def _prompt(n: int = 7, seed: int = 3) -> torch.Tensor:
    return torch.randint(1, 100, (1, n), generator=torch.Generator().manual_seed(seed))


def _pt_tokens(model, prompt, new_tokens):
    from slimformer.searcher.devices.generate import Generation

    return Generation(model, prompt, new_tokens).tokens()


def _ov_generation(model, prompt, new_tokens, **convert):
    from slimformer.searcher.devices.openvino_lm import OVGeneration, convert_lm, load_lm

    compiled = load_lm(convert_lm(model, **convert), threads=1, exact=True)
    return OVGeneration(compiled, prompt, new_tokens)


def test_stateful_ir_greedy_tokens_equal_pytorch_at_float32_and_decode_repeats(tiny_models):
    model = tiny_models["llama"].build()
    prompt = _prompt()
    gen = _ov_generation(model, prompt, 12)
    assert gen.tokens() == _pt_tokens(model, prompt, 12)
    first = gen.decode()
    assert gen.decode() == first  # the state is put back to the prompt before every decode
    timed = gen()
    assert set(timed) == {"prefill", "decode"} and timed["prefill"] > 0 and timed["decode"] > 0
    names = {n for p in gen.request.model_inputs for n in p.get_names()}
    assert names == {"input_ids", "attention_mask", "position_ids", "beam_idx"}  # the cache is state, not inputs
    assert len(gen.request.query_state()) == 2 * tiny_models["llama"].layers


def test_pruned_model_with_fewer_kv_groups_per_layer_generates_as_pytorch(tiny_models):
    from slimformer.methods import Plan, apply_plan

    model = tiny_models["llama"].build()
    # layer 0 keeps one KV group (2 query heads), layer 1 all, layer 2 is dropped; FFN 64 -> 40
    pruned = apply_plan(model, Plan(layers=[0, 1], heads=[2, 4, 4], ffn=40))
    prompt = _prompt(9, seed=5)
    gen = _ov_generation(pruned, prompt, 10)
    assert gen.tokens() == _pt_tokens(pruned, prompt, 10)
    gen.prefill()  # the state holds the prompt's keys and values: one KV group in layer 0, two in layer 1
    shapes = [tuple(s.state.shape) for s in gen.request.query_state()]
    assert sorted(shapes) == sorted([(1, 1, 9, 8)] * 2 + [(1, 2, 9, 8)] * 2)


def _compressed_layers(ov_model) -> dict[str, set[int]]:
    """element type of a compressed weight -> the transformer layers whose MatMuls read one."""
    import re

    out: dict[str, set[int]] = {}
    for node in ov_model.get_ops():
        if node.get_type_name() == "Constant" and node.get_element_type().get_type_name() in ("u4", "i4", "u8", "i8"):
            users = [u.get_node() for u in node.output(0).get_target_inputs()]
            while users and users[0].get_type_name() not in ("MatMul", "Gather"):
                users = [u.get_node() for u in users[0].output(0).get_target_inputs()]
            for u in users:
                m = re.search(r"layers\.(\d+)\.", u.get_friendly_name())
                out.setdefault(node.get_element_type().get_type_name(), set()).add(int(m.group(1)) if m else -1)
    return out


def test_plan_bits_become_real_int4_and_int8_weights_in_their_layers_only(tiny_models):
    from slimformer.methods import Plan
    from slimformer.searcher.devices.openvino_lm import BITS_MARK, convert_lm, plan_weights

    model = tiny_models["llama"].build()
    plan = Plan(bits=[4, 32, 8]).resolve(model_shape(model))
    bits = plan_weights(plan, 3)
    assert bits == [4, 32, 8]
    found = _compressed_layers(convert_lm(model, bits=bits, group_size=16))
    assert found.get("u4") == {0}  # INT4_ASYM: unsigned 4-bit with zero points, layer 0 only
    assert found.get("u8") == {2}  # INT8_ASYM: layer 2 only (int4 zero points are u4 too)
    assert -1 not in set().union(*found.values())  # embeddings and the LM head stay float
    assert BITS_MARK == {"openvino": "real", "eager": "simulated"}
    # a kept subset of layers is read by original index; bits 16 are compile-time precision (float here)
    assert plan_weights(Plan(layers=[0, 2], bits=[16, 4, 8]).resolve(model_shape(model)), 3) == [32, 8]


def test_whole_model_int4_uses_nncf_defaults_and_bad_modes_are_one_line(tiny_models):
    from slimformer.searcher.devices.openvino_lm import convert_lm
    from slimformer.searcher.errors import UserError

    model = tiny_models["llama"].build()
    found = _compressed_layers(convert_lm(model, weights="int4_asym", group_size=16))
    assert found["u4"] == {0, 1, 2}
    assert -1 in found["u8"]  # NNCF's default: embeddings / LM head in its int8 backup mode
    with pytest.raises(UserError, match="weights must be one of"):
        convert_lm(model, weights="int3")


def model_shape(model):
    from slimformer.methods import get_adapter

    return get_adapter(model).shape()


def test_scorer_gives_the_full_sequence_logits_of_pytorch_row_by_row(tiny_models):
    from slimformer.searcher.devices.openvino_lm import OVScorer, convert_lm, load_lm

    model = tiny_models["llama"].build()
    scorer = OVScorer(load_lm(convert_lm(model), threads=1, exact=True, last_logits=False))
    ids = torch.randint(1, 100, (2, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 7:] = 0  # a padded row is scored on its own tokens
    got = scorer(input_ids=ids, attention_mask=mask).logits
    with torch.no_grad():
        ref0 = model(input_ids=ids[:1]).logits
        ref1 = model(input_ids=ids[1:, :7]).logits
    assert torch.allclose(got[0], ref0[0], atol=1e-4)
    assert torch.allclose(got[1, :7], ref1[0], atol=1e-4) and torch.all(got[1, 7:] == 0)


def test_generation_dispatches_by_runtime_and_refuses_one_without_a_loop(tiny_models):
    from slimformer.methods import Plan
    from slimformer.searcher.devices.genai import GenAIGeneration
    from slimformer.searcher.devices.generate import Generation, generation
    from slimformer.searcher.devices.openvino_lm import OVGeneration
    from slimformer.searcher.errors import UserError

    pytest.importorskip("openvino_genai")
    model = tiny_models["llama"].build()
    prompt = _prompt()
    assert isinstance(generation("eager", model, prompt, 3, 1), Generation)
    plan = Plan(bits=[8, 32, 32]).resolve(model_shape(model))
    gen = generation("openvino", model, prompt, 3, 1, plan=plan)  # GenAI's loop, as users run the export
    assert isinstance(gen, GenAIGeneration) and len(gen.tokens()) == 3 and gen.source["bits"] == [8, 32, 32]
    own = generation("openvino", model, prompt, 3, 1, plan=plan, own_loop=True)
    assert isinstance(own, OVGeneration) and len(own.tokens()) == 3
    with pytest.raises(UserError, match="no KV-cache generation loop for runtime 'onnxruntime'"):
        generation("onnxruntime", model, prompt, 3, 1)


def test_genai_pipeline_greedy_tokens_equal_pytorch_at_float32_and_decode_is_its_own_measure(tiny_models):
    """LLMPipeline on the folder save_lm writes (token ids in, no template): the same greedy tokens as PyTorch
    at f32; its decode call returns GenAI's own measure of the G steps after the first token (latency.Elapsed),
    and the protocol takes that instead of the call's wall time (which includes the prefill)."""
    pytest.importorskip("openvino_genai")
    from slimformer.searcher.devices import genai
    from slimformer.searcher.devices.generate import DecodeRunner
    from slimformer.searcher.devices.latency import Elapsed, measure_latency
    from slimformer.searcher.devices.openvino_lm import lm_compile_config, plan_source

    model = tiny_models["llama"].build()
    prompt = _prompt(9, seed=4)
    src = plan_source(model, threads=1)
    gen = genai.genai_generation(src, model, prompt, 6)
    exact = genai.GenAIGeneration(gen.folder, prompt, 6, genai.genai_properties(lm_compile_config("f32", exact=True), 1))
    assert exact.tokens() == _pt_tokens(model, prompt, 6)
    assert gen.properties["ATTENTION_BACKEND"] == "SDPA" and gen.properties["INFERENCE_NUM_THREADS"] == 1
    got = gen.decode()
    assert isinstance(got, Elapsed) and got > 0
    assert DecodeRunner(gen, "openvino").loop == genai.GENAI_LOOP == "openvino_genai.LLMPipeline"
    timed = gen()
    assert set(timed) == {"prefill", "decode"} and timed["prefill"] > 0 and timed["decode"] > 0
    folder = gen.folder
    assert (folder / "openvino_model.xml").exists()
    del gen
    import gc

    gc.collect()
    assert not folder.exists()  # the candidate's temporary folder goes with it

    import time

    def slow():
        time.sleep(0.05)
        return Elapsed(1.5)

    lat = measure_latency({"own": slow, "wall": lambda: time.sleep(0.02)}, rounds=2, warmup=0, gap_ms=0)
    assert lat["own"].samples_ms == [1.5, 1.5] and lat["wall"].median_ms >= 20


def test_without_genai_openvino_decoders_run_in_slimformers_own_loop_and_say_so(tiny_models, monkeypatch):
    from slimformer.searcher.devices import genai
    from slimformer.searcher.devices.generate import DecodeRunner, generation
    from slimformer.searcher.devices.openvino_lm import OVGeneration

    model = tiny_models["llama"].build()
    monkeypatch.setattr(genai, "genai_available", lambda: False)
    gen = generation("openvino", model, _prompt(), 3, 1)
    assert isinstance(gen, OVGeneration) and gen.source["precision"] == "f32"
    assert DecodeRunner(gen, "openvino").loop == "slimformer (openvino)"
    assert generation("eager", model, _prompt(), 3, 1).__class__.__name__ == "Generation"
