"""OpenVINO decoder candidates timed as their users run them (docs/decoders.md): `openvino_genai.LLMPipeline`
on the folder `openvino_lm.save_lm` writes (a temporary folder per candidate, removed with it), greedy, batch
1, the study's prompt as token ids (exactly P tokens: no chat template, no tokenizer), G new tokens with
min_new_tokens = max_new_tokens and ignore_eos (no early stop), `device.threads` threads and the compile
settings the export's card states (`genai_properties`: the stateful IR's SDPA backend, `lm_compile_config`).

- **prefill** (time to first token): one generate of 1 new token, timed by the protocol as a call (wall
  clock, as a user's call is timed);
- **decode**: one generate of G + 1 new tokens whose call returns (`latency.Elapsed`) the sum of GenAI's own
  durations between consecutive tokens (`perf_metrics.raw_metrics.m_durations`, in µs; their mean is what
  `perf_metrics.get_tpot()` reports): G decode steps after the first token, as slimformer's loops time
  `decode`, so the protocol's division by G gives ms per generated token (benchmarks/decoder_peers.py
  reads the same metrics: `get_ttft()`, `get_tpot()`).

`GenAIGeneration` has the interface of `Generation` (prefill, decode, tokens, a timed call) plus `source`
(the IR and how it was compiled: export) and `scorer` (the same IR's full-sequence logits, compiled as
slimformer compiles it: quality of what was timed). `genai_available()` says whether openvino-genai is
installed; without it decoders are timed in slimformer's own loop (`OVGeneration`), and the trial says so.

Imports: errors, methods (public names).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from .latency import Elapsed
from .openvino_lm import OVScorer, lm_compile_config, load_lm, save_lm

__all__ = ["GenAIGeneration", "GENAI_LOOP", "genai_available", "genai_generation", "genai_properties", "genai_tokens"]

GENAI_LOOP = "openvino_genai.LLMPipeline"  # the trial's `decode_loop` when timed in GenAI's own loop


def genai_available() -> bool:
    try:
        import openvino_genai  # noqa: F401
    except ImportError:
        return False
    return True


def genai_properties(compile_config: dict, threads: int) -> dict:
    """What LLMPipeline is told to run as the search timed: the stateful IR's SDPA backend (GenAI's default
    backend is paged attention), the compile settings and the threads."""
    return {"ATTENTION_BACKEND": "SDPA", "INFERENCE_NUM_THREADS": threads, "ENABLE_CPU_PINNING": False,
            **compile_config}


def _config(new_tokens: int):
    import openvino_genai as g

    return g.GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, ignore_eos=True,
                              do_sample=False, apply_chat_template=False)


def _inputs(prompt: torch.Tensor):
    import openvino as ov
    import openvino_genai as g

    ids = prompt.numpy().astype(np.int64)
    return g.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids)))


def genai_tokens(folder: Path, prompt: torch.Tensor, new_tokens: int, properties: dict) -> list[int]:
    """Greedy tokens of `folder` through openvino_genai.LLMPipeline on the prompt's token ids."""
    import openvino_genai as g

    pipe = g.LLMPipeline(str(folder), "CPU", **properties)
    return [int(t) for t in pipe.generate(_inputs(prompt), _config(new_tokens)).tokens[0]]


class GenAIGeneration:
    """Greedy generation at batch 1 by openvino_genai.LLMPipeline on a folder, with the interface of `Generation`."""

    loop = GENAI_LOOP

    def __init__(self, folder: Path, prompt: torch.Tensor, new_tokens: int, properties: dict):
        import openvino_genai as g

        if prompt.dim() != 2 or prompt.shape[0] != 1:
            raise ValueError(f"a generation prompt is 1 x P token ids, got shape {tuple(prompt.shape)}")
        self.folder, self.properties, self.new_tokens = Path(folder), dict(properties), int(new_tokens)
        self.pipe = g.LLMPipeline(str(folder), "CPU", **self.properties)
        self.inputs = _inputs(prompt)
        self.first_config, self.tokens_config, self.decode_config = (_config(1), _config(self.new_tokens),
                                                                     _config(self.new_tokens + 1))
        self.source: dict = {}
        self.temp = None  # the TemporaryDirectory holding `folder` when `genai_generation` wrote it

    def prefill(self):
        """One generate of a single new token (time to first token, timed as a call)."""
        return self.pipe.generate(self.inputs, self.first_config)

    def _decode_ms(self, out) -> float:
        steps = list(out.perf_metrics.raw_metrics.m_durations)  # µs between consecutive new tokens
        if len(steps) != self.new_tokens:
            raise RuntimeError(f"LLMPipeline reported {len(steps)} token durations for {self.new_tokens} decode steps")
        return sum(steps) / 1e3

    def decode(self) -> Elapsed:
        """G greedy decode steps after the first token: GenAI's own measure of them in ms (`latency.Elapsed`)."""
        return Elapsed(self._decode_ms(self.pipe.generate(self.inputs, self.decode_config)))

    def tokens(self) -> list[int]:
        """The G greedy tokens generated after the prompt."""
        return [int(t) for t in self.pipe.generate(self.inputs, self.tokens_config).tokens[0]]

    def scorer(self) -> OVScorer:
        """Full-sequence logits of the same IR (slimformer's compile of it, at the timed precision)."""
        src = self.source
        if src:
            return OVScorer(load_lm(src["ov_model"], src["threads"], src["precision"], last_logits=False))
        precision = self.properties.get("INFERENCE_PRECISION_HINT", "f32")
        return OVScorer(load_lm(self.folder, self.properties.get("INFERENCE_NUM_THREADS", 1), precision,
                                last_logits=False))

    def __call__(self) -> dict[str, float]:
        """One timed generation (G + 1 new tokens): GenAI's time to first token, and its decode ms per token."""
        out = self.pipe.generate(self.inputs, self.decode_config)
        return {"prefill": float(out.perf_metrics.get_ttft().mean), "decode": self._decode_ms(out) / self.new_tokens}


def genai_generation(source: dict, model, prompt: torch.Tensor, new_tokens: int) -> GenAIGeneration:
    """LLMPipeline on `source`'s IR (`openvino_lm.plan_source`) written with `model`'s configs into a temporary
    folder (removed with the generation), compiled with the export's settings."""
    temp = tempfile.TemporaryDirectory(prefix="slimformer-genai-")
    save_lm(source["ov_model"], Path(temp.name), model=model)
    props = genai_properties(lm_compile_config(source["precision"]), source["threads"])
    gen = GenAIGeneration(Path(temp.name), prompt, new_tokens, props)
    gen.source, gen.temp = source, temp
    return gen
