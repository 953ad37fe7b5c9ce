"""The model card (README.md) of an onnx/openvino export, written from its manifest.

Hugging Face front matter (base_model when the base model's own card or config names a hub id,
library_name, pipeline_tag, license taken from the base model's card where it has one, tags),
then: the plan in words, the format and runtime, the speedup with its interval, the device it was
measured on (CPU, threads, batch, sequence length), quality on validation and test against the
uncompressed model where known, the lines that load it, and the settings that give the measured
speed (OpenVINO compile config; ONNX Runtime session options).

Imports: errors, methods (public names).
"""

from __future__ import annotations

import json
from pathlib import Path

from .layout import SENTENCE_TASK, load_lines

__all__ = ["render_card", "render_lm_card", "plan_in_words", "base_card_facts", "PIPELINE_TAGS"]

PIPELINE_TAGS = {SENTENCE_TASK: "sentence-similarity", "text-classification": "text-classification",
                 "image-classification": "image-classification", "causal-lm": "text-generation"}
ORT_SETTINGS = ("ONNX Runtime CPU session: graph_optimization_level ORT_ENABLE_ALL, intra_op_num_threads = the "
                "threads below, inter_op_num_threads 1, execution_mode ORT_SEQUENTIAL, session config "
                "session.intra_op.allow_spinning = 0")


def _front_matter(path: Path) -> dict:
    """key: value pairs (scalars only) of a README's YAML front matter."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    if not text.startswith("---"):
        return {}
    out = {}
    for line in text.split("\n---", 1)[0].splitlines()[1:]:
        if ":" in line and not line.startswith((" ", "-")):
            key, value = line.split(":", 1)
            if value.strip():
                out[key.strip()] = value.strip().strip("'\"")
    return out


def base_card_facts(base_dir: str | None, model_name: str) -> dict:
    """license and base_model from the base model's own folder (README front matter, config's
    _name_or_path), else base_model from a hub-id-like model name."""
    facts = {}
    if base_dir and Path(base_dir).is_dir():
        front = _front_matter(Path(base_dir) / "README.md")
        if front.get("license"):
            facts["license"] = front["license"]
        if front.get("base_model"):
            facts["base_model"] = front["base_model"]
    if "base_model" not in facts and model_name.count("/") == 1 and not Path(model_name).exists():
        facts["base_model"] = model_name
    return facts


def _layers(values, kept) -> str:
    """`layer:value` for each kept layer (a plan's lists are per ORIGINAL layer index)."""
    return ", ".join(f"{layer}:{values[layer]}" for layer in kept if layer < len(values))


def plan_in_words(plan: dict, num_layers: int | None = None) -> list[str]:
    """One line per thing the plan changes; ['no change (the uncompressed model)'] when nothing."""
    lines = []
    kept = plan.get("layers")
    per_layer = [plan.get(k) for k in ("heads", "ffn", "rank", "bits") if isinstance(plan.get(k), list)]
    idx = kept if kept is not None else list(range(num_layers or max(map(len, per_layer), default=0)))
    width = num_layers or max(map(len, per_layer), default=len(idx))
    plan = {**plan, **{k: [plan[k]] * width for k in ("heads", "ffn", "rank", "bits")  # one value: every layer
                       if isinstance(plan.get(k), int) and not isinstance(plan.get(k), bool)}}
    if kept is not None:
        lines.append(f"keeps {len(kept)} of {num_layers or '?'} layers (original indices {', '.join(map(str, kept))})")
    if plan.get("heads") is not None:
        lines.append(f"attention heads kept per layer (layer:heads) {_layers(plan['heads'], idx)}; "
                     f"chosen by {plan.get('importance', 'magnitude')} importance")
    if plan.get("ffn") is not None:
        lines.append(f"FFN neurons kept per layer (layer:width) {_layers(plan['ffn'], idx)}")
    if plan.get("rank") is not None and any(plan["rank"]):
        lines.append(f"FFN projections factorised to rank (layer:rank, 0 dense) {_layers(plan['rank'], idx)}")
    bits = plan.get("bits")
    if bits is not None and any(b != 32 for b in bits):
        lines.append(f"weight bits per layer (layer:bits) {_layers(bits, idx)}; int8 layers as the runtime's int8 "
                     f"({plan.get('int8_scheme', 'dynamic')}, weights {plan.get('int8_weights', 's8')}, rounding "
                     f"{plan.get('quant_method', 'rtn')})")
    if plan.get("smooth"):
        lines.append(f"SmoothQuant alpha {plan['smooth']}")
    if plan.get("recovery") not in (None, "none"):
        lines.append(f"after pruning: {plan['recovery']}")
    steps = (plan.get("distill") or {}).get("steps") or 0
    if steps:
        lines.append(f"distilled from the uncompressed model for {steps} steps")
    return lines or ["no change (the uncompressed model)"]


def _num(v, fmt=".2f") -> str:
    return format(v, fmt) if isinstance(v, int | float) else "not measured"


def _speed_line(trial: dict) -> str:
    again = trial.get("retimed") or {}
    if again.get("speedup") is not None:
        conf = again.get("confidence")
        return (f"{again['speedup']:.2f}x against the uncompressed model in stock PyTorch float32, re-timed "
                f"(interval {_num(again.get('low'))}x .. {_num(again.get('high'))}x"
                + (f" at {conf:.0%} confidence" if isinstance(conf, float) else "") + ")")
    if trial.get("speedup") is not None:
        low, high = trial.get("speedup_low"), trial.get("speedup_high")
        interval = f" (interval {_num(low)}x .. {_num(high)}x)" if low is not None else " (no interval measured)"
        return f"{trial['speedup']:.2f}x against the uncompressed model in stock PyTorch float32, in the search{interval}"
    return "not measured"


def _quality_lines(manifest: dict) -> list[str]:
    trial, check = manifest.get("trial") or {}, manifest.get("verification") or {}
    metric = check.get("metric") or trial.get("metric") or "quality"
    base = trial.get("baseline") or {}
    rows = ["| split | this model | uncompressed |", "| --- | --- | --- |",
            f"| validation (full split, re-scored from this folder's model file at export) | "
            f"{_num(check.get('quality'))} | {_num(check.get('baseline_quality'))} |"]
    if trial.get("quality") is not None:
        rows.append(f"| validation ({base.get('split') or 'as the study scored it'}, PyTorch) | "
                    f"{_num(trial['quality'])} | {_num(base.get('quality'))} |")
    rows.append(f"| test | {_num(trial.get('test_quality'))} | {_num(base.get('test_quality'))} |")
    return [f"Metric: {metric}.", "", *rows]


def render_card(manifest: dict, base_facts: dict) -> str:
    """README.md of an artifact folder."""
    task, fmt = manifest.get("task", ""), manifest["format"]
    timed = manifest.get("timed_on") or {}
    sentence = task == SENTENCE_TASK
    front = {"base_model": base_facts.get("base_model"),
             "library_name": "sentence-transformers" if sentence else "transformers",
             "pipeline_tag": PIPELINE_TAGS.get(task), "license": base_facts.get("license"),
             "tags": ["slimformer", fmt, "compressed"] + (["sentence-transformers", "feature-extraction"] if sentence
                                                         else ["optimum"])}
    lines = ["---"]
    for key, value in front.items():
        if value is None:
            continue
        if isinstance(value, list):
            lines += [f"{key}:", *[f"- {v}" for v in value]]
        else:
            lines.append(f"{key}: {value}")
    lines += ["---", "", f"# {manifest.get('model', 'model')} compressed by slimformer ({fmt})", ""]
    plan = manifest.get("plan") or {}
    config = manifest.get("base_config") or {}
    lines += ["## Plan", "", *[f"- {x}" for x in plan_in_words(plan, config.get("num_layers"))], ""]
    runtime = "ONNX Runtime (CPUExecutionProvider)" if fmt == "onnx" else "OpenVINO (CPU plugin)"
    files = ", ".join(f"`{f}`" for f in manifest.get("model_files", []))
    lines += ["## Format", "", f"{fmt} ({files}), run by {runtime}; "
              f"{'int8 layers: ' + ', '.join(manifest['int8_layers']) if manifest.get('int8_layers') else 'float32 weights'}.",
              f"Outputs: {', '.join(manifest.get('outputs', []))}; dynamic batch and sequence axes.", ""]
    trial = manifest.get("trial") or {}
    lines += ["## Speed", "", f"Speedup: {_speed_line(trial)}.", "",
              f"Measured on: {timed.get('cpu', 'unknown CPU')}, {timed.get('threads', '?')} threads, batch "
              f"{timed.get('batch_size', '?')}, sequence length {timed.get('seq_len', '?')} (the study's device; "
              f"the speed on another CPU differs).", ""]
    lines += ["## Quality", "", *_quality_lines(manifest), ""]
    check = manifest.get("verification") or {}
    if check.get("scored_max_abs_diff") is not None:
        lines += [f"Checked at export against the PyTorch model: max abs difference of {check.get('scored_output')} "
                  f"{check['scored_max_abs_diff']:.2e} (real tokens only).", ""]
    threads = timed.get("threads")
    lines += ["## Load it", "", "```python", *load_lines(fmt, task, threads, manifest.get("compile_config"), manifest.get("max_length")), "```", "",
              "PATH is this folder. " + ("sentence-transformers needs `pip install sentence-transformers[onnx]` "
                                         "(or `[openvino]`) for these backends."
                                         if sentence else "Optimum needs `pip install optimum-onnx[onnxruntime]` "
                                         "(or `optimum-intel[openvino]`)."), ""]
    lines += ["## Settings that give the measured speed", ""]
    if fmt == "openvino":
        lines += [f"OpenVINO compile config: `{json.dumps(manifest.get('compile_config') or {})}`, plus "
                  f"INFERENCE_NUM_THREADS {threads} and ENABLE_CPU_PINNING false. OpenVINO's defaults differ "
                  "(on a CPU with AMX it runs bf16), so the speed and outputs loaded with defaults differ.", ""]
    else:
        lines += [ORT_SETTINGS.replace("the threads below", str(threads)) + ".", ""]
    lines += ["## Config", "", "`config.json` is the base model's with `slimformer.plan`; "
              + ("per-layer head counts and FFN widths are not expressible there, so only the graph carries the "
                 "real shapes. There are no PyTorch weights in this folder." if (config.get("pruned"))
                 else "the shapes are the base model's. There are no PyTorch weights in this folder."),
              "", "Files are listed with their sha256 in `manifest.json`; `slimformer evaluate PATH --study STUDY` "
              "checks them and re-measures quality and speed.", ""]
    return "\n".join(lines)


def render_lm_card(manifest: dict, base_facts: dict) -> str:
    """README.md of a decoder's OpenVINO GenAI folder (devices/lm_export.py)."""
    trial, check, timed = manifest.get("trial") or {}, manifest.get("verification") or {}, manifest.get("timed_on") or {}
    gen, weights = manifest.get("generate") or {}, manifest.get("weights") or {}
    front = [f"base_model: {base_facts['base_model']}"] if base_facts.get("base_model") else []
    front += [f"license: {base_facts['license']}"] if base_facts.get("license") else []
    lines = ["---", *front, "library_name: openvino", "pipeline_tag: text-generation", "tags:", "- slimformer",
             "- openvino", "- openvino-genai", "- compressed", "---", "",
             f"# {manifest.get('model', 'model')} compressed by slimformer (OpenVINO GenAI)", "", "## Plan", "",
             *[f"- {x}" for x in plan_in_words(manifest.get("plan") or {},
                                              (manifest.get("base_config") or {}).get("num_layers"))], ""]
    bits = weights.get("bits") or []
    lines += ["## Format", "", f"A stateful OpenVINO IR (`{', '.join(manifest.get('model_files', []))}`: the KV cache "
              "inside the model) with its tokenizer IRs, the folder `openvino_genai.LLMPipeline` opens. Weights per "
              f"layer (bits): {', '.join(map(str, bits)) or 'float32'}; 8 and 4 are real int8 / int4 kernels (NNCF "
              f"INT8_ASYM per channel, INT4_ASYM in groups of {weights.get('int4_group_size') or '-'}); the embeddings "
              "and the LM head are float.", ""]
    lines += ["## Speed", "", f"Decode speedup: {_speed_line(trial)}; decode = ms per generated token, greedy, batch 1, "
              f"{gen.get('new_tokens', '?')} tokens after a {gen.get('prompt_tokens', '?')}-token prompt; prefill "
              f"(time to first token) speedup {_num(trial.get('prefill_speedup'))}x.", "",
              f"Measured on: {timed.get('cpu', 'unknown CPU')}, {timed.get('threads', '?')} threads (the speed on "
              "another CPU differs).", ""]
    lines += ["## Quality", "", "| | this model | uncompressed |", "| --- | --- | --- |",
              f"| validation perplexity (full split, from this folder's IR) | {_num(check.get('perplexity'))} | "
              f"{_num(check.get('baseline_perplexity'))} |",
              f"| KL / top-1 agreement against the plan's PyTorch model | {_num(check.get('kl'), '.4f')} / "
              f"{_num(check.get('top1_agreement'), '.1f')}% | |", ""]
    exact = check.get("greedy_exact") or {}
    lines += [f"Checked at export: greedy tokens of the IR against the PyTorch model on {exact.get('prompts', '?')} "
              f"prompts x {exact.get('new_tokens', '?')} tokens agree on {_num(exact.get('agreement'), '.1f')}% of "
              "positions (f32 KV cache" + (", required to be exact at float32)." if check.get("float32") else
                                           "; int8/int4 in PyTorch and OpenVINO are different quantizations)."), ""]
    props = manifest.get("genai_properties") or {}
    lines += ["## Load it", "", "```python", "import openvino_genai",
              'pipe = openvino_genai.LLMPipeline(PATH, "CPU")',
              'print(pipe.generate("The capital of France is", max_new_tokens=32, apply_chat_template=False))', "```",
              "", "PATH is this folder (`pip install openvino-genai`). `apply_chat_template=False`: for an instruct model "
              "GenAI applies the chat template to a plain string unless told not to.", "",
              "## Settings that give the measured speed", "",
              f"`openvino_genai.LLMPipeline(PATH, \"CPU\", **{json.dumps(props)})`: the stateful SDPA backend the search "
              "timed (GenAI's default is paged attention), its precision and threads.", "",
              "Files are listed with their sha256 in `manifest.json`; `slimformer evaluate PATH --study STUDY` checks "
              "them, re-measures perplexity, decode and prefill, and prints the greedy text.", ""]
    return "\n".join(lines)
