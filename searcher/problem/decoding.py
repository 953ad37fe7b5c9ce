"""A decoder study's candidates in the runtime that times them (device.generate, docs/decoders.md).

Each candidate runs its own greedy KV-cache generation loop on the study's prompt (devices/generate.py):
in eager PyTorch the model as built (bits 8: torch's dynamic int8 Linear; bits 4: SIMULATED, weights
rounded in float32), in OpenVINO the stateful IR of the plan's float32 model with the plan's bits as
NNCF weight compression (8: INT8_ASYM per channel, 4: INT4_ASYM in groups of the plan's group_size, or
the largest divisor of it the layers' widths allow): REAL int8/int4 kernels. That float32 model is the
plan rebuilt with bits 32 (the same pruning; its weights unrounded), cached for the last plan; a model
whose plan distilled (a finished one) is not rebuilt: its trained weights as rounded in PyTorch
(`graph.float_copy`: int8 weights dequantized, simulated int4 weights as their grid values) are
compressed again. Bits 3 and 2 have no OpenVINO kernel and are refused there.

Under OpenVINO the candidate runs in openvino_genai.LLMPipeline as users run the export (devices/genai.py;
the trial's `decode_loop` names it); without openvino-genai in slimformer's own loop on the same IR, which the
log and `decode_loop` say. The runner (`DecodeRunner`) keeps its generation, so the candidate's prefill is timed in the same
runtime (`phase_figures`) and its quality is scored on the artifact that was timed (`scored_model`:
OpenVINO's full-sequence logits of the same IR, compiled the same way).

Imports: devices, config, errors, methods.
"""

from __future__ import annotations

import json
from dataclasses import replace

from slimformer.methods import plan_of

from ..devices.adaptive import speedup_interval
from ..devices.genai import GENAI_LOOP
from ..devices.generate import GENERATE_RUNTIMES, DecodeRunner, generation, tokens_per_s
from ..devices.latency import measure_latency

__all__ = ["decoder_runtimes", "openvino_refusal", "float_source", "decode_runner", "scored_model", "phase_figures",
           "REAL_LOW_BITS", "decoder_formats"]

REAL_LOW_BITS = {"openvino": (8, 4), "eager": (8,)}  # bits below 16 run on real kernels, per decoder runtime
OWN_LOOP_NOTE = "openvino-genai is not installed"
OPENVINO_LOW_BITS = "int4_weights"  # the format name the device facts add for OpenVINO's int4 weight kernels


def decoder_runtimes(runtimes: tuple[str, ...]) -> tuple[str, ...]:
    """The study's runtimes that have a KV-cache generation loop (`auto`: eager and OpenVINO)."""
    return tuple(r for r in runtimes if r in GENERATE_RUNTIMES)


def decoder_formats(formats: dict[str, list[str]], runtimes: tuple[str, ...]) -> dict[str, list[str]]:
    """The device facts' formats of a decoder study: its runtimes only, OpenVINO's with its int4 weights."""
    return {rt: [*fs, *([OPENVINO_LOW_BITS] if rt == "openvino" else [])] for rt, fs in formats.items()
            if rt in runtimes}


def openvino_refusal(bits) -> str | None:
    """Why OpenVINO cannot run a decoder plan whose kept layers have `bits`, or None."""
    low = sorted({b for b in bits if b not in (32, 16, 8, 4)})
    if low:
        return (f"bits {', '.join(map(str, low))} cannot run with device.runtime openvino: its decoder weight kernels "
                "are int8 and int4 (3 and 2 bits are simulated in eager only)")
    return None


def float_source(bench, model):
    """(the float32 model OpenVINO compresses, the resolved plan or None) of a built decoder `model`."""
    plan = plan_of(model)
    if plan is None or all(b == 32 for b in plan.bits):
        return model, plan
    if plan.distill.steps:  # trained: rebuilding would lose its training
        from ..devices.graph import float_copy

        return float_copy(model)[0], plan
    key = json.dumps(plan.to_dict(), sort_keys=True)
    cached = getattr(bench, "float_build", None)  # (plan key, model): the last plan's, kept on the Workbench
    if cached is None or cached[0] != key:
        bench.float_build = cached = (key, bench.build(replace(plan, bits=(32,) * len(plan.bits))))
    return cached[1], plan


def decode_runner(bench, model, runtime: str) -> DecodeRunner:
    """`model`'s greedy decode in `runtime` on the study's prompt (a zero-argument callable)."""
    prompt, g, threads = bench.inputs["input_ids"], bench.generate.new_tokens, bench.cfg.device.threads
    if runtime == "openvino":
        source, plan = float_source(bench, model)
        runner = DecodeRunner(generation(runtime, source, prompt, g, threads, plan), runtime)
        if runner.loop != GENAI_LOOP and not getattr(bench, "told_own_loop", False):
            bench.told_own_loop = True
            bench.log(f"{OWN_LOOP_NOTE}: OpenVINO candidates are timed in slimformer's own loop on the IR "
                      "(slower than LLMPipeline runs the exported folder); pip install openvino-genai")
        return runner
    return DecodeRunner(generation(runtime, model, prompt, g, threads), runtime)


def scored_model(model, runner):
    """What to score so that quality is that of what `runner` times: OpenVINO's IR (full-sequence logits,
    compiled as timed), or the PyTorch model itself."""
    scorer = getattr(runner.generation, "scorer", None)
    return model if scorer is None else scorer()


def phase_figures(bench, runner: DecodeRunner, decode_ms=None) -> dict:
    """The candidate's prefill (in its runner's runtime) against the original's (eager) in interleaved rounds:
    median, speedup and its interval at budget.confidence; its decode tokens per second; and under OpenVINO
    `simulated` False (its int8/int4 weights are real kernels); `decode_loop`: whose generation loop timed it."""
    from ..devices.generate import Generation

    d, prompt = bench.cfg.device, bench.inputs["input_ids"]
    runners = {"baseline": Generation(bench.model, prompt, 1).prefill, "candidate": runner.generation.prefill}
    with bench.timing():
        lat = measure_latency(runners, baseline="baseline", rounds=d.rounds, warmup=d.warmup, threads=d.threads)
    ratios = [b / c for b, c in zip(lat["baseline"].samples_ms, lat["candidate"].samples_ms)]
    low, high = speedup_interval(ratios, bench.cfg.budget.confidence)
    out = {"latency_phase": "decode", "prefill_ms": lat["candidate"].median_ms,
           "prefill_baseline_ms": lat["baseline"].median_ms, "prefill_speedup": lat["candidate"].speedup,
           "prefill_speedup_low": low, "prefill_speedup_high": high}
    out["decode_loop"] = runner.loop  # whose generation loop timed decode and prefill
    if runner.runtime == "openvino":
        out["simulated"] = False
    decode_ms = getattr(decode_ms, "candidate_ms", decode_ms)  # a SpeedupEstimate: its median per token
    return out if decode_ms is None else {**out, "decode_tokens_per_s": tokens_per_s(decode_ms)}
