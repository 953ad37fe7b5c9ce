"""Shared fixtures: tiny random-init models of every supported architecture (`tiny`, one
test per architecture; `tiny_models`, all of them by name), and the committed STS-B dev pairs
(`sts_dev_rows`: studies/data/sts-dev.tsv, the quickstart's validation file; tests never read
anything outside the repository), and `requires` for what a test needs from the machine.

Tests take these as fixtures rather than importing this module: other test folders have
conftest.py files of their own, so `import conftest` would be ambiguous."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
STS_DEV = PROJECT_ROOT / "studies" / "data" / "sts-dev.tsv"  # source and licence: studies/data/README.md

# Tiny shapes: hidden 32, 3 layers, 4 heads (head_dim 8), FFN 64, vocab 100. The Mistral/Qwen
# decoders use 4 KV groups of 2 query heads (Qwen3 3 groups, with head_dim 8 decoupled from
# hidden/heads as in real Qwen3), so that a kept set of groups can be neither a prefix nor a suffix.
HIDDEN, LAYERS, HEADS, FFN, VOCAB, LABELS = 32, 3, 4, 64, 100, 3
BATCH, SEQ = 2, 8


@dataclass(frozen=True)
class Tiny:
    """One tiny architecture: how to build it and feed it, and the facts a test needs to
    predict parameter counts (bias flags, number of FFN input projections, KV heads)."""

    name: str
    cls_name: str
    hidden: int = HIDDEN
    layers: int = LAYERS
    heads: int = HEADS
    ffn: int = FFN
    kv_heads: int = HEADS
    head_size: int | None = None  # head_dim when it is not hidden // heads (Qwen3)
    qkv_bias: bool = True
    ffn_bias: bool = True
    ffn_inputs: int = 1
    causal_lm: bool = False
    vision: bool = False
    post_norm: bool = False  # LayerNorm after the residual add (BERT family, DistilBERT)
    qk_norm: bool = False  # an RMSNorm on each query and key head (Qwen3), removed with the attention

    def config(self):
        import transformers as T

        bert_like = dict(hidden_size=self.hidden, num_hidden_layers=self.layers, num_attention_heads=self.heads,
                         intermediate_size=self.ffn)
        encoder = dict(bert_like, vocab_size=VOCAB, max_position_embeddings=64, num_labels=LABELS)
        decoder = dict(bert_like, num_key_value_heads=self.kv_heads, vocab_size=VOCAB, max_position_embeddings=64,
                       bos_token_id=0, eos_token_id=0, pad_token_id=0)
        if self.name == "bert":
            return T.BertConfig(**encoder)
        if self.name == "roberta":
            return T.RobertaConfig(**encoder)
        if self.name == "xlm-roberta":
            return T.XLMRobertaConfig(**encoder)
        if self.name == "electra":  # embeddings narrower than the layers, projected up as in ELECTRA-small
            return T.ElectraConfig(**encoder, embedding_size=16)
        if self.name == "distilbert":
            return T.DistilBertConfig(dim=self.hidden, n_layers=self.layers, n_heads=self.heads, hidden_dim=self.ffn,
                                      vocab_size=VOCAB, max_position_embeddings=64, num_labels=LABELS)
        if self.name == "gpt2":
            return T.GPT2Config(n_embd=self.hidden, n_layer=self.layers, n_head=self.heads, n_inner=self.ffn,
                                vocab_size=VOCAB, n_positions=64, bos_token_id=0, eos_token_id=0)
        if self.name == "llama":
            return T.LlamaConfig(**decoder)
        if self.name == "mistral":
            return T.MistralConfig(**decoder, sliding_window=4)
        if self.name == "qwen2":  # q/k/v carry a bias, o does not
            return T.Qwen2Config(**decoder)
        if self.name == "qwen3":  # RMSNorm on each query and key head
            return T.Qwen3Config(**decoder, head_dim=self.head_size)
        if self.name == "vit":
            return T.ViTConfig(**bert_like, image_size=16, patch_size=4, num_channels=3, num_labels=LABELS)
        raise KeyError(self.name)

    def build(self, seed: int = 0):
        import torch
        import transformers as T

        torch.manual_seed(seed)
        return getattr(T, self.cls_name)(self.config()).eval()

    def inputs(self, seed: int = 1, labels: bool = False) -> dict:
        import torch

        g = torch.Generator().manual_seed(seed)
        if self.vision:
            batch = {"pixel_values": torch.randn(BATCH, 3, 16, 16, generator=g)}
        else:
            ids = torch.randint(1, VOCAB, (BATCH, SEQ), generator=g)
            mask = torch.ones(BATCH, SEQ, dtype=torch.long)
            mask[1, -3:] = 0  # one padded sequence
            batch = {"input_ids": ids, "attention_mask": mask}
        if labels:
            batch["labels"] = (batch["input_ids"].clone() if self.causal_lm
                               else torch.randint(0, LABELS, (BATCH,), generator=g))
        return batch

    def logits_shape(self) -> tuple[int, ...]:
        return (BATCH, SEQ, VOCAB) if self.causal_lm else (BATCH, LABELS)

    @property
    def head_dim(self) -> int:
        return self.head_size or self.hidden // self.heads

    def calibration(self, n_batches: int = 2):
        """Batches with labels (so the model returns its own task loss)."""
        from slimformer.methods import Calibration

        return Calibration([self.inputs(seed=10 + i, labels=True) for i in range(n_batches)])


TINY = {
    t.name: t
    for t in (
        Tiny("bert", "BertForSequenceClassification", post_norm=True),
        Tiny("distilbert", "DistilBertForSequenceClassification", post_norm=True),
        Tiny("gpt2", "GPT2LMHeadModel", causal_lm=True),
        Tiny("roberta", "RobertaForSequenceClassification", post_norm=True),
        Tiny("xlm-roberta", "XLMRobertaForSequenceClassification", post_norm=True),
        Tiny("electra", "ElectraForSequenceClassification", post_norm=True),
        Tiny("llama", "LlamaForCausalLM", kv_heads=2, qkv_bias=False, ffn_bias=False, ffn_inputs=2, causal_lm=True),
        Tiny("mistral", "MistralForCausalLM", heads=8, kv_heads=4, qkv_bias=False, ffn_bias=False, ffn_inputs=2,
             causal_lm=True),
        Tiny("qwen2", "Qwen2ForCausalLM", heads=8, kv_heads=4, ffn_bias=False, ffn_inputs=2, causal_lm=True),
        Tiny("qwen3", "Qwen3ForCausalLM", heads=6, kv_heads=3, head_size=8, qkv_bias=False, ffn_bias=False,
             ffn_inputs=2, causal_lm=True, qk_norm=True),
        Tiny("vit", "ViTForImageClassification", vision=True),
    )
}


@pytest.fixture(params=sorted(TINY))
def tiny(request) -> Tiny:
    return TINY[request.param]


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch intra-op thread for a module of tiny-model tests (`pytestmark =
    pytest.mark.usefixtures("one_torch_thread")`): their forwards take milliseconds on one
    thread, and measured 100x longer with two threads on the shared, loaded 2-core machine."""
    from slimformer.searcher.devices.latency import fixed_threads

    with fixed_threads(1):
        yield


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, Tiny]:
    return TINY


@pytest.fixture(scope="session")
def sts_dev_rows() -> list[list[str]]:
    """The STS-B dev split's rows (genre, file, year, id, score, sentence1, sentence2)."""
    import csv

    with open(STS_DEV, newline="", encoding="utf-8") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


@pytest.fixture(scope="session")
def requires():
    """`requires(ok, reason)`: a prerequisite of the machine, not of the package (PostgreSQL's
    server binaries, user namespaces for a read-only bind mount). When it is missing the test
    skips on a developer's machine, and fails under SLIMFORMER_CI=1 (`.ci/run` sets it): CI
    installs every prerequisite, so there only a missing GPU skips."""

    def check(ok: bool, reason: str) -> None:
        if ok:
            return
        if os.environ.get("SLIMFORMER_CI") == "1":
            pytest.fail(f"{reason} (SLIMFORMER_CI=1: CI must run this test)", pytrace=False)
        pytest.skip(reason)

    return check


@pytest.fixture(scope="session", autouse=True)
def no_telemetry():
    """CI=true for the session (and every CLI subprocess it starts): OpenVINO's converter and NNCF
    send usage telemetry from every conversion unless the environment says CI (their
    `disable_in_ci`). Tests send nothing anywhere, and offline each send costs time: the smallest
    OpenVINO profile (test_openvino_profile.py) took 81 s with them and 13 s without. Set once the
    tests are collected, so hypothesis keeps the settings profile it chose at import."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CI", "true")
        yield


@pytest.fixture(autouse=True)
def denormals_restored():
    """Each test leaves this thread's denormal handling (FTZ/DAZ) as it found it. Libraries that compile
    OpenVINO models on the calling thread (sentence-transformers' openvino backend, a test's own
    `openvino.compile_model`) set FTZ there and leave it set, and hypothesis then refuses to run in the
    same test process. slimformer's own compiles put the state back (test_openvino.py, test_formats.py
    check that); this keeps one test's library call from changing the next test's arithmetic."""
    import torch

    def flushing() -> bool:
        return 2.2250738585072014e-308 / 2 == 0.0

    before = flushing()
    yield
    if flushing() != before:
        torch.set_flush_denormal(before)
