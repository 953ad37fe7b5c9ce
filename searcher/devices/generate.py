"""Decoder latency as users of causal LMs measure it (docs/decoders.md): batch 1, greedy, a KV cache.

- **prefill** (time to first token): one forward over a P-token prompt into a fresh `DynamicCache`,
  returning the cache and the first new token;
- **decode** (ms per generated token): G greedy steps, one token each, on that KV cache; the figure is
  the G steps' time over G (tokens per second = 1000 / decode ms).

`Generation` holds one model's prompt and its prefilled cache. Its `prefill` and `decode` are
zero-argument callables, so the project's interleaved protocol (latency.measure_latency: warm-up,
alternating order, an idle gap before every timed call, paired per-round ratios, and the adaptive
rounds and bootstrap intervals of adaptive.py) times either phase against the same phase of the
baseline; `decode` crops the cache back to the prompt first, so every call decodes the same G
positions. `measure_generation` is the whole protocol in one: each round runs every model's prefill
then its decode (as a user's `generate` does), timing both phases, and returns both with their
speedups from the same rounds.

Here eager PyTorch (transformers' forward with `DynamicCache`; the prefill computes the LM head on the
last position only, as `generate` does); OpenVINO's stateful LLM has the same interface
(devices/genai.GenAIGeneration: openvino_genai.LLMPipeline's own loop, whose decode call returns its own
measure of the G steps, `latency.Elapsed`; devices/openvino_lm.OVGeneration: slimformer's loop on the IR, when
GenAI is missing). A study times a candidate in either (`GENERATE_RUNTIMES`; `auto`: both,
the faster counts) through `DecodeRunner`, which keeps the generation so that its prefill is timed and
its artifact scored in the same runtime.

Imports: errors, methods (public names).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from ..errors import UserError
from .latency import IDLE_GAP_MS, LatencyResult, fixed_threads

__all__ = ["Generation", "DecodeRunner", "measure_generation", "per_token", "latency_result", "prompt_ids", "PHASES",
           "GENERATE_RUNTIMES", "tokens_per_s", "generation"]

PHASES = ("prefill", "decode")
GENERATE_RUNTIMES = ("eager", "openvino")  # runtimes with a KV-cache generation loop (`generation`)


def prompt_ids(tokenizer, prompt_tokens: int, text: str | None = None) -> torch.Tensor:
    """A 1 x P prompt of real text (repeated when short), exactly P tokens, no padding."""
    text = text or ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
                    "must be in want of a wife. ")
    ids: list[int] = []
    while len(ids) < prompt_tokens:
        ids += tokenizer(text, add_special_tokens=not ids)["input_ids"]
    return torch.tensor([ids[:prompt_tokens]])


class Generation:
    """One model's greedy generation at batch 1: `prefill()` and `decode()` as zero-argument callables."""

    def __init__(self, model, prompt: torch.Tensor, new_tokens: int):
        if prompt.dim() != 2 or prompt.shape[0] != 1:
            raise ValueError(f"a generation prompt is 1 x P token ids, got shape {tuple(prompt.shape)}")
        self.model, self.prompt, self.new_tokens = model, prompt, int(new_tokens)
        self.cache, self.first = self._prefill()

    def _prefill(self):
        from transformers import DynamicCache

        with torch.inference_mode():
            out = self.model(input_ids=self.prompt, cache=DynamicCache(config=self.model.config), use_cache=True,
                             logits_to_keep=1)  # the LM head on the last position only, as `generate` does
        return out.cache, out.logits[:, -1:].argmax(-1)

    def prefill(self) -> torch.Tensor:
        """One forward over the prompt into a fresh KV cache; returns the first new token."""
        return self._prefill()[1]

    def _steps(self, cache, token: torch.Tensor, out: list | None = None) -> torch.Tensor:
        with torch.inference_mode():
            for _ in range(self.new_tokens):
                logits = self.model(input_ids=token, cache=cache, use_cache=True).logits
                if out is not None:
                    out.append(int(token))
                token = logits[:, -1:].argmax(-1)
        return token

    def decode(self) -> torch.Tensor:
        """G greedy steps on the prefilled cache, cropped back to the prompt first."""
        self.cache.crop(self.prompt.shape[1] - self.cache.get_seq_length())  # transformers 5: minus the extra
        return self._steps(self.cache, self.first)

    def tokens(self) -> list[int]:
        """The G greedy tokens generated after the prompt (the first one from the prefill)."""
        cache, first = self._prefill()
        out: list[int] = []
        self._steps(cache, first, out)
        return out

    def __call__(self) -> dict[str, float]:
        """One timed generation: prefill ms, then decode ms per token on the cache it returned."""
        t0 = time.perf_counter()
        cache, first = self._prefill()
        t1 = time.perf_counter()
        self._steps(cache, first)
        t2 = time.perf_counter()
        return {"prefill": (t1 - t0) * 1e3, "decode": (t2 - t1) * 1e3 / self.new_tokens}


class DecodeRunner:
    """A study's latency runner of a decoder: calling it decodes (`generation.decode`); `generation` (a
    `Generation`, `GenAIGeneration` or `OVGeneration`) also gives the prefill, `runtime` names where it runs
    and `loop` whose generation loop times it (GENAI_LOOP, or slimformer's own)."""

    def __init__(self, generation, runtime: str):
        self.generation, self.runtime = generation, runtime
        self.loop = getattr(generation, "loop", f"slimformer ({runtime})")

    def __call__(self):
        return self.generation.decode()


def generation(runtime: str, model, prompt: torch.Tensor, new_tokens: int, threads: int, plan=None,
               own_loop: bool = False):
    """`model`'s greedy KV-cache generation in `runtime`: eager PyTorch (`Generation`), or OpenVINO's stateful
    LLM (devices/openvino_lm.py: a resolved plan's bits 8 and 4 as real int8 / int4 weights, so `model` is
    then built with float weights) run by openvino_genai.LLMPipeline as users run it (devices/genai.py), or by
    slimformer's own loop on the IR (`OVGeneration`) when openvino-genai is not installed or `own_loop`."""
    if runtime == "eager":
        return Generation(model, prompt, new_tokens)
    if runtime == "openvino":
        from .genai import genai_available, genai_generation
        from .openvino_lm import plan_generation, plan_source

        if own_loop or not genai_available():
            return plan_generation(model, prompt, new_tokens, threads, plan)
        return genai_generation(plan_source(model, threads, plan), model, prompt, new_tokens)
    raise UserError(f"device.generate: no KV-cache generation loop for runtime {runtime!r} "
                    f"(runtimes with one: {', '.join(GENERATE_RUNTIMES)})")


def latency_result(samples_ms: list[float]) -> LatencyResult:
    """Median and spread of per-round times, as latency.measure_latency reports them."""
    q = np.quantile(samples_ms, [0.1, 0.25, 0.75, 0.9])
    return LatencyResult(median_ms=statistics.median(samples_ms), p10_ms=float(q[0]), p90_ms=float(q[3]),
                         iqr_ms=float(q[2] - q[1]), samples_ms=list(samples_ms))


def per_token(results: dict[str, LatencyResult], new_tokens: int) -> dict[str, LatencyResult]:
    """Timings of whole `decode` calls (G steps each) as ms per generated token; speedups unchanged."""
    out = {}
    for name, r in results.items():
        res = latency_result([x / new_tokens for x in r.samples_ms])
        res.speedup = r.speedup
        out[name] = res
    return out


def tokens_per_s(decode_ms: float) -> float:
    return 1e3 / decode_ms


def measure_generation(runners: dict[str, Callable[[], dict]], baseline: str | None = None, rounds: int = 10,
                       warmup: int = 1, threads: int | None = None,
                       gap_ms: float = IDLE_GAP_MS) -> dict[str, dict[str, LatencyResult]]:
    """Time every runner (a `Generation`, or any callable returning {"prefill": ms, "decode": ms per
    token} of one timed generation) in interleaved rounds, alternating the order, `gap_ms` of idle
    time before each. Returns {phase: {name: LatencyResult}}, each phase's speedups against
    `baseline` the median of its paired per-round ratios."""
    if baseline is not None and baseline not in runners:
        raise ValueError(f"baseline {baseline!r} is not one of the runners {list(runners)}")
    samples = {phase: {name: [] for name in runners} for phase in PHASES}
    names = list(runners)
    with fixed_threads(threads), torch.inference_mode():
        for _ in range(warmup):
            for fn in runners.values():
                fn()
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                time.sleep(gap_ms / 1e3)
                got = runners[name]()
                for phase in PHASES:
                    samples[phase][name].append(float(got[phase]))
    out: dict[str, dict[str, LatencyResult]] = {}
    for phase in PHASES:
        out[phase] = {name: latency_result(xs) for name, xs in samples[phase].items()}
        if baseline is not None:
            base = samples[phase][baseline]
            for name, res in out[phase].items():
                res.speedup = statistics.median(b / c for b, c in zip(base, samples[phase][name]))
    return out
