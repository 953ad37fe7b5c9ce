"""A decoder's export (`slimformer export` of a device.generate study, docs/decoders.md): the folder that
`openvino_genai.LLMPipeline(folder, "CPU")` opens, verified, inside the usual artifact layout.

The folder: openvino_model.xml/.bin (the stateful IR the search timed: the plan's float32 model with its
bits 8/4 as NNCF INT8_ASYM / INT4_ASYM weights, devices/openvino_lm.py), config.json,
generation_config.json, the tokenizer's own files and, with openvino-tokenizers installed, the
tokenizer and detokenizer IRs; README.md (the card: the three lines that load it) and manifest.json (the
sha256 of every file, the plan, the compile settings, the verification).

The check, before anything is written: greedy tokens of the IR against the plan's PyTorch model on
CHECK_PROMPTS prompts of the validation text. A float32 plan must give the same tokens exactly (IR
compiled with the cache and activations in f32: `lm_compile_config(exact=True)`), or nothing is written;
with int8/int4 weights the two are different quantizations (torch's dynamic int8 and simulated int4
against NNCF's kernels), so the greedy agreement is reported and the teacher-forced top-1 agreement of
their next-token predictions on the full validation text must reach TOP1_TOLERANCE (a wrong graph agrees
on about 1/vocabulary). Perplexity, KL and top-1 agreement are re-scored from the IR itself, and the
staged folder is opened by GenAI's LLMPipeline (when installed) whose greedy tokens are compared too.

Imports: errors, methods (public names).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from .genai import GenAIGeneration, genai_available, genai_properties, genai_tokens
from .generate import DecodeRunner, Generation, tokens_per_s
from .latency import device_facts, measure_latency
from .openvino_lm import OVGeneration, OVScorer, lm_compile_config, load_lm, save_lm

__all__ = ["LM_LAYOUT", "export_lm", "evaluate_lm_artifact", "CHECK_PROMPTS", "TOP1_TOLERANCE"]

LM_LAYOUT = "openvino-genai"
CHECK_PROMPTS = 3
CHECK_PROMPT_TOKENS, CHECK_NEW_TOKENS = 16, 16  # at most: shorter when the study's prompt is
# teacher-forced top-1 agreement (%) with the plan's PyTorch model below which an export is refused: OpenVINO's
# INT4_ASYM g64 of SmolLM2 agreed 65.6% with the float32 original and a fixed int8/int4 plan 73.3% (test text,
# docs/decoders.md); a graph that computes something else agrees on about 1 / vocabulary
TOP1_TOLERANCE = 50.0


def _check_prompts(bench) -> list[torch.Tensor]:
    """CHECK_PROMPTS prompts of real text: the validation rows' openings (the study's prompt when short of them)."""
    p = min(CHECK_PROMPT_TOKENS, bench.generate.prompt_tokens)
    out = []
    for batch in bench.full_validation:
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
            if int(mask.sum()) >= p and len(out) < CHECK_PROMPTS:
                out.append(ids[:p][None])
    return out or [bench.inputs["input_ids"][:, :p]]


def _greedy(bench, model, src: dict, prompts, exact: bool) -> dict:
    """Greedy tokens of the IR (compiled `exact` or as timed) against the PyTorch model's on each prompt."""
    new = min(CHECK_NEW_TOKENS, bench.generate.new_tokens)
    compiled = load_lm(src["ov_model"], src["threads"], src["precision"], exact=exact)
    same = prefix = total = 0
    tokens = []
    for prompt in prompts:
        pt, ov = Generation(model, prompt, new).tokens(), OVGeneration(compiled, prompt, new).tokens()
        same += sum(a == b for a, b in zip(pt, ov))
        prefix += next((i for i, (a, b) in enumerate(zip(pt, ov)) if a != b), len(pt))
        total += len(pt)
        tokens.append({"pytorch": pt, "openvino": ov})
    return {"equal": same == total, "agreement": 100.0 * same / total, "matching_prefix": prefix / len(prompts),
            "new_tokens": new, "prompts": len(prompts), "tokens": tokens}


def export_lm(fmt: str, bench, model, plan, out: Path, info: dict, log=print) -> dict:
    """Build, verify and write a decoder's GenAI folder into `out` (staged beside it, moved in complete)."""
    from slimformer.methods.export import ExportError

    from .card import base_card_facts, render_lm_card
    from .layout import seal

    if fmt != "openvino":
        raise ExportError(f"a decoder timed with device.generate exports as openvino (the folder OpenVINO GenAI "
                          f"opens) or pytorch, not {fmt}")
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    log("building the OpenVINO LLM (stateful IR, the plan's weights compressed by NNCF) ...")
    src = bench.runner(model, "openvino").generation.source
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        files = save_lm(src["ov_model"], stage, model=model, tokenizer=_ov_tokenizer(bench.tokenizer))
        bench.tokenizer.save_pretrained(str(stage))
        log("verifying it: greedy tokens against the PyTorch model, quality re-scored from the IR ...")
        prompts = _check_prompts(bench)
        floating = all(b == 32 for b in (src["bits"] or [32])) and src["precision"] == "f32"
        exact = _greedy(bench, model, src, prompts, exact=True)
        timed = _greedy(bench, model, src, prompts, exact=False)
        if floating and not exact["equal"]:
            raise ExportError(f"the IR's greedy tokens differ from the PyTorch model's at float32 ({exact['agreement']:.1f}% "
                              "of positions agree): not written")
        scorer = OVScorer(load_lm(src["ov_model"], src["threads"], src["precision"], last_logits=False))
        scored = bench.task.quality(scorer, bench.full_validation, reference=model)
        if scored["top1_agreement"] < TOP1_TOLERANCE:
            raise ExportError(f"the IR's next-token predictions agree with the PyTorch model's on "
                              f"{scored['top1_agreement']:.1f}% of the validation tokens (at least {TOP1_TOLERANCE:.0f}% "
                              "needed): not written")
        config = lm_compile_config(src["precision"])
        props = genai_properties(config, src["threads"])
        genai = None
        if genai_available():
            got = genai_tokens(stage, prompts[0], exact["new_tokens"], props)
            genai = {"tokens": got, "equal_to_openvino": got == timed["tokens"][0]["openvino"]}
        baseline = bench.quality(bench.model, full=True)
        log(f"greedy tokens vs PyTorch on {len(prompts)} prompts x {exact['new_tokens']}: {exact['agreement']:.1f}% "
            f"(IR with f32 cache), {timed['agreement']:.1f}% (as timed); top-1 agreement {scored['top1_agreement']:.1f}%, "
            f"KL {scored['kl']:.4f}; perplexity from the IR {scored['perplexity']:.2f} (uncompressed "
            f"{baseline['perplexity']:.2f})" + ("" if genai is None else
                                                f"; LLMPipeline's greedy tokens equal the IR's: {genai['equal_to_openvino']}"))
        manifest = {
            "format": "openvino", "layout": LM_LAYOUT, "format_version": 1, "task": bench.task.name,
            "model_files": files[:2], "library_files": files[2:], "compile_config": config, "genai_properties": props,
            "weights": {"bits": src["bits"], "int4_group_size": src["group_size"],
                        "kernels": "real (NNCF INT8_ASYM per channel, INT4_ASYM per group)"},
            "generate": {"prompt_tokens": bench.generate.prompt_tokens, "new_tokens": bench.generate.new_tokens},
            "verification": {"greedy_exact": exact, "greedy_as_timed": timed, "genai": genai,
                             "top1_tolerance": TOP1_TOLERANCE, "float32": floating,
                             **{k: v for k, v in scored.items()}, "baseline_perplexity": baseline["perplexity"],
                             "quality": scored["quality"], "baseline_quality": baseline["quality"],
                             "split": "full validation", "against": "the plan's PyTorch model"},
            **info, "timed_on": {**device_facts(bench.cfg.device.threads), "prompt_tokens": bench.generate.prompt_tokens,
                                 "new_tokens": bench.generate.new_tokens},
        }
        base_dir = getattr(bench.model.config, "name_or_path", None)
        seal(stage, out, manifest, render_lm_card(manifest, base_card_facts(base_dir, bench.cfg.model.name)))
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return manifest


def _ov_tokenizer(tokenizer):
    """The tokenizer to convert to OpenVINO IRs, or None without openvino-tokenizers (GenAI then needs them)."""
    try:
        import openvino_tokenizers  # noqa: F401
    except ImportError:
        return None
    return tokenizer


def evaluate_lm_artifact(bench, folder: Path, rounds: int | None = None) -> dict:
    """A decoder's GenAI folder, every file checked against its sha256: perplexity from the IR, decode and prefill
    against the study's baseline, and the greedy text of the study's prompt (slimformer's loop and, when
    installed, LLMPipeline's); the keys of `Workbench.score`."""
    from .layout import verified_tree

    manifest, _ = verified_tree(folder)
    d, prompt, new = bench.cfg.device, bench.inputs["input_ids"], bench.generate.new_tokens
    precision = (manifest.get("compile_config") or {}).get("INFERENCE_PRECISION_HINT", "f32")
    own = OVGeneration(load_lm(folder, d.threads, precision), prompt, new)
    props = manifest.get("genai_properties") or genai_properties(lm_compile_config(precision), d.threads)
    gen = GenAIGeneration(folder, prompt, new, props) if genai_available() else own  # timed as users run it
    q = bench.quality(OVScorer(load_lm(folder, d.threads, precision, last_logits=False)), full=True)
    runner = DecodeRunner(gen, "openvino")
    lat = bench.latency_of({"candidate": runner}, rounds)
    with bench.timing():
        pre = measure_latency({"baseline": Generation(bench.model, prompt, 1).prefill, "candidate": gen.prefill},
                              baseline="baseline", rounds=d.rounds, warmup=d.warmup, threads=d.threads)
    bench.log(f"decode and prefill timed in {runner.loop}")
    tokens = own.tokens()
    text = bench.tokenizer.decode(tokens)
    bench.log(f"greedy text after the study's {prompt.shape[1]}-token prompt ({new} tokens, slimformer's loop): {text!r}")
    genai_text = None
    if gen is own:
        bench.log("openvino-genai is not installed: LLMPipeline not run")
    else:
        got = gen.tokens()
        genai_text = bench.tokenizer.decode(got)
        bench.log(f"greedy text by openvino_genai.LLMPipeline: {genai_text!r} ({'the same' if got == tokens else 'DIFFERENT'})")
    size = sum((folder / f).stat().st_size for f in manifest["model_files"]) / 2**20
    cand = lat["candidate"]  # ms per generated token (Workbench.latency_of)
    return {**q, "latency_ms": cand.median_ms, "latency_p10_ms": cand.p10_ms, "latency_p90_ms": cand.p90_ms,
            "baseline_latency_ms": lat["baseline"].median_ms, "speedup": cand.speedup, "latency_phase": "decode",
            "decode_tokens_per_s": tokens_per_s(cand.median_ms), "prefill_ms": pre["candidate"].median_ms,
            "decode_loop": runner.loop,
            "prefill_speedup": pre["candidate"].speedup, "params": manifest.get("params"), "size_mb": size,
            "simulated": False, "runtime": "openvino", "plan": manifest.get("plan"), "greedy_tokens": tokens,
            "greedy_text": text, "genai_text": genai_text, "genai_same": None if genai_text is None else got == tokens}
