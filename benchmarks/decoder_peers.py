"""Decoder peers on SmolLM2-135M-Instruct (issue 27), as users run a causal LM: batch 1, greedy, a KV cache,
2 threads, a 128-token prompt of real text (the WikiText-2 test slice's opening) and 128 new tokens.

Rows: stock PyTorch float32 (the original: the Q4_1 GGUF dequantized once, searcher/problem/gguf.py) and
bfloat16; slimformer's OpenVINO LLM runtime (searcher/devices/openvino_lm.py: the stateful IR, its own greedy
loop) in f32 and bf16, with NNCF INT8_ASYM and INT4_ASYM group 64 weights (whole model, NNCF's defaults),
and the same INT4 folder opened by `openvino_genai.LLMPipeline` as users run it (apply_chat_template off);
llama.cpp (llama-cpp-python, its own venv: LLAMA_PY) on the shipped Q4_1 GGUF, driven through
benchmarks/_llamacpp_child.py. Every runner is timed in the same interleaved rounds
(devices/generate.measure_generation: warm-up, alternating order, an idle gap before every call); speedups
are medians of per-round ratios against PyTorch float32.

Quality (`--part quality`, no timing): on the WikiText-2 raw test slice (studies/data/wikitext2-test.jsonl,
SmolLM2's tokenizer, windows of 256 tokens advancing by 128, every token predicted once), perplexity and,
against PyTorch float32's next-token distributions, mean KL (nats per token) and top-1 agreement.

Run: /work/briefs/bin/heavy python -m benchmarks.decoder_peers --part quality
     /work/briefs/bin/quiet python -m benchmarks.decoder_peers --part timing    (ROUNDS=5: ~6 min)
Writes benchmarks/results/decoder_peers_results.md and .json (each part fills its own columns; --part report rewrites
the .md from the .json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

warnings.simplefilter("ignore")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import RESULTS, write_md  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
THREADS, ROUNDS = 2, int(os.environ.get("ROUNDS", 5))
PROMPT, NEW = 128, 128
CONTEXT, STRIDE = 256, 128
LLAMA_PY = os.environ.get("LLAMA_PY", "/tmp/llama-venv/bin/python")
OUT = RESULTS / "decoder_peers_results"
BASE = "PyTorch float32 (eager, sdpa)"
# a fixed per-layer plan (not searched): int8 weights on the layers whose down_proj inputs carry the largest
# activations (docs/decoders.md: 1, 2, 11, 28, 29) and on layer 0, int4 g64 elsewhere; embeddings/LM head float
SENSITIVE = (0, 1, 2, 11, 28, 29)
PLAN_BITS = [8 if i in SENSITIVE else 4 for i in range(30)]
PLAN_ROW = "slimformer plan: int8 layers 0-2, 11, 28-29, int4 g64 the rest (OpenVINO bf16)"


def texts() -> list[str]:
    rows = (ROOT / "studies" / "data" / "wikitext2-test.jsonl").read_text().splitlines()
    return [json.loads(r)["text"] for r in rows]


class LlamaCpp:
    """llama.cpp in its own process and environment."""

    def __init__(self, gguf: Path):
        self.proc = subprocess.Popen([LLAMA_PY, str(HERE / "_llamacpp_child.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.version = self.ask(cmd="load", path=str(gguf), threads=THREADS, n_ctx=512, score_ctx=CONTEXT)["version"]
        self.prompt: list[int] = []
        self.tokens: list[int] = []

    def ask(self, **msg) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def __call__(self) -> dict:
        got = self.ask(cmd="gen", prompt=self.prompt, new=NEW)
        self.tokens = got["tokens"][:NEW]
        return {"prefill": got["prefill"], "decode": got["decode"]}

    def logits(self, windows: list[list[int]]) -> list[torch.Tensor]:
        with tempfile.TemporaryDirectory() as tmp:
            files = self.ask(cmd="logits", windows=windows, out=tmp)["files"]
            return [torch.from_numpy(np.load(f)) for f in files]


class GenAI:
    """openvino_genai.LLMPipeline on a folder written by openvino_lm.save_lm: TTFT and TPOT of one
    generate() call, from its own perf metrics."""

    def __init__(self, folder: Path, prompt: torch.Tensor):
        import openvino as ov
        import openvino_genai as g

        sched = g.SchedulerConfig()  # its default (paged attention) backend, WITHOUT prefix caching: every timed
        sched.enable_prefix_caching = False  # call repeats the same prompt, whose KV blocks it would otherwise reuse
        sched.cache_size = 1  # GB of KV blocks
        try:  # the stateful SDPA backend if the paged one fails
            self.pipe = g.LLMPipeline(str(folder), "CPU", {"scheduler_config": sched}, INFERENCE_NUM_THREADS=THREADS)
            self.backend = "paged attention, no prefix caching"
        except RuntimeError as e:
            print(f"GenAI default backend failed ({str(e).splitlines()[0][:200]}); ATTENTION_BACKEND=SDPA")
            self.pipe = g.LLMPipeline(str(folder), "CPU", INFERENCE_NUM_THREADS=THREADS, ATTENTION_BACKEND="SDPA")
            self.backend = "SDPA"
        self.config = g.GenerationConfig(max_new_tokens=NEW + 1, min_new_tokens=NEW + 1, ignore_eos=True,
                                         do_sample=False, apply_chat_template=False)
        self.ids = ov.Tensor(prompt.numpy().astype(np.int64))
        self.mask = ov.Tensor(np.ones_like(prompt.numpy(), dtype=np.int64))
        self.tokens: list[int] = []

    def __call__(self) -> dict:
        import openvino_genai as g

        out = self.pipe.generate(g.TokenizedInputs(self.ids, self.mask), self.config)
        self.tokens = list(out.tokens[0])[:NEW]
        m = out.perf_metrics
        return {"prefill": m.get_ttft().mean, "decode": m.get_tpot().mean}


def build(tmp: Path):
    """name -> (runner factory, scorer or None); the shared tokenizer and the original model."""
    from slimformer.searcher.devices import openvino_lm as lm
    from slimformer.searcher.problem.gguf import gguf_alias_path, gguf_folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = gguf_folder("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    bf16 = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    irs = {"f32": lm.convert_lm(model), "int8_asym": lm.convert_lm(model, weights="int8_asym"),
           "int4_asym": lm.convert_lm(model, weights="int4_asym", group_size=64),
           "plan": lm.convert_lm(model, bits=PLAN_BITS, group_size=64)}
    lm.save_lm(irs["int4_asym"], tmp / "int4", model, tok)
    ov_rows = {"OpenVINO f32": ("f32", "f32"), "OpenVINO bf16 (its default on this CPU)": ("f32", "bf16"),
               "OpenVINO INT8_ASYM weights (bf16)": ("int8_asym", "bf16"),
               "OpenVINO INT4_ASYM g64 weights (bf16)": ("int4_asym", "bf16"),
               PLAN_ROW: ("plan", "bf16")}
    return tok, model, bf16, irs, ov_rows, gguf_alias_path("smollm2-135m")[0], lm


def quality(args) -> dict:
    from slimformer.searcher.problem.lmquality import next_token_agreement, stream_windows

    with tempfile.TemporaryDirectory() as tmp:
        tok, model, bf16, irs, ov_rows, gguf, lm = build(Path(tmp))
        batches = stream_windows(tok, texts(), CONTEXT, STRIDE, batch_size=1)
        if args.windows:
            batches = batches[: args.windows]
        windows = [b["input_ids"][0].tolist() for b in batches]
        scorers = {BASE: lambda ids: model(input_ids=ids).logits[0],
                   "PyTorch bfloat16": lambda ids: bf16(input_ids=ids).logits[0].float()}
        for name, (ir, prec) in ov_rows.items():
            s = lm.OVScorer(lm.load_lm(irs[ir], THREADS, prec, last_logits=False))
            scorers[name] = lambda ids, s=s: s(input_ids=ids).logits[0]
        cpp = LlamaCpp(gguf)
        cpp_logits = cpp.logits(windows)
        stats = {name: {"nll": 0.0, "kl": 0.0, "same": 0.0, "n": 0} for name in [*scorers, "llama.cpp Q4_1"]}
        t0 = time.time()
        with torch.inference_mode():
            for w, b in enumerate(batches):
                ids, labels = b["input_ids"], b["labels"][0]
                keep = labels[1:] != -100
                ref = None
                for name in stats:
                    logits = cpp_logits[w] if name == "llama.cpp Q4_1" else scorers[name](ids)
                    logits = logits[:-1].float()
                    ref = logits if ref is None else ref
                    nll = torch.nn.functional.cross_entropy(logits[keep], labels[1:][keep], reduction="sum")
                    kl, same, n = next_token_agreement(ref, logits, keep)
                    s = stats[name]
                    s["nll"] += float(nll)
                    s["kl"] += kl
                    s["same"] += same
                    s["n"] += n
        cpp.proc.kill()
    out = {name: {"perplexity": math.exp(s["nll"] / s["n"]), "kl": s["kl"] / s["n"],
                  "top1_agreement": 100 * s["same"] / s["n"], "tokens": s["n"]} for name, s in stats.items()}
    print(f"quality: {len(batches)} windows, {time.time() - t0:.0f} s")
    return {"quality": out, "windows": len(batches)}


def timing(args) -> dict:
    from slimformer.searcher.devices.generate import Generation, measure_generation, prompt_ids, tokens_per_s

    with tempfile.TemporaryDirectory() as tmp:
        tok, model, bf16, irs, ov_rows, gguf, lm = build(Path(tmp))
        prompt = prompt_ids(tok, PROMPT, " ".join(texts()[1:6]))
        runners = {BASE: Generation(model, prompt, NEW), "PyTorch bfloat16": Generation(bf16, prompt, NEW)}
        for name, (ir, prec) in ov_rows.items():
            runners[name] = lm.OVGeneration(lm.load_lm(irs[ir], THREADS, prec), prompt, NEW)
        genai = runners["OpenVINO GenAI LLMPipeline, INT4_ASYM g64 (same IR)"] = GenAI(Path(tmp) / "int4", prompt)
        cpp = LlamaCpp(gguf)
        cpp.prompt = prompt[0].tolist()
        runners["llama.cpp Q4_1"] = cpp
        ref = runners[BASE].tokens()
        t0 = time.time()
        res = measure_generation(runners, baseline=BASE, rounds=ROUNDS, warmup=1, threads=THREADS)
        wall = time.time() - t0
        cpp.proc.kill()
        agree = {}
        for name, r in runners.items():
            got = r.tokens() if hasattr(r, "tokens") and callable(r.tokens) else r.tokens
            agree[name] = next((i for i, (a, b) in enumerate(zip(ref, got)) if a != b), min(len(ref), len(got)))
    out = {}
    for name in runners:
        p, d = res["prefill"][name], res["decode"][name]
        out[name] = {"prefill_ms": p.median_ms, "prefill_speedup": p.speedup, "decode_ms": d.median_ms,
                     "decode_tokens_per_s": tokens_per_s(d.median_ms), "decode_speedup": d.speedup,
                     "greedy_tokens_equal_to_float32": agree[name]}
    print(f"timing: {ROUNDS} rounds, {wall:.0f} s")
    return {"timing": out, "rounds": ROUNDS, "llama_cpp": cpp.version, "timing_wall_s": round(wall),
            "genai_backend": genai.backend}


def write(results: dict, note: str | None) -> None:
    import openvino
    import transformers

    q, t = results.get("quality", {}), results.get("timing", {})
    lines = ["# Decoder peers: SmolLM2-135M-Instruct, batch 1, greedy, 2 threads, 128-token prompt, 128 new tokens",
             "",
             "Machine: AMD EPYC (family 25 model 17), 2 cores, no GPU; flags avx2 avx512f avx512bw avx512vl "
             "avx512_vnni avx512_bf16, no AMX.",
             "",
             f"torch {torch.__version__}, transformers {transformers.__version__}, OpenVINO {openvino.__version__}, "
             f"llama-cpp-python {results.get('llama_cpp', '?')} (own venv; GGML_NATIVE=OFF, AVX512, VNNI, BF16). "
             f"Timing: {results.get('rounds', '?')} interleaved rounds after 1 warm-up ({results.get('timing_wall_s', '?')} s); "
             f"quality: WikiText-2 raw test slice, {results.get('windows', '?')} windows of {CONTEXT} tokens, stride {STRIDE}. "
             f"GenAI: {results.get('genai_backend', '?')}, greedy, apply_chat_template off; its quality is the "
             "INT4 row's IR. OpenVINO rows: the CPU plugin's defaults (u8 KV cache, activations of compressed "
             "MatMuls quantized in groups of 32) at the precision named. 'greedy tokens = f32's': how many of "
             "the 128 greedy tokens equal PyTorch float32's before the first difference.",
             "",
             "| runtime | prefill ms (128 tokens) | decode ms/token | decode tokens/s | decode speedup | prefill speedup "
             "| greedy tokens = f32's | test perplexity | KL vs f32 (nats/token) | top-1 agreement |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in dict.fromkeys([*t, *q]):
        a, b = t.get(name, {}), q.get(name, {})

        def f(d, k, fmt):
            return format(d[k], fmt) if k in d else "-"

        lines.append(f"| {name} | {f(a, 'prefill_ms', '.1f')} | {f(a, 'decode_ms', '.2f')} | "
                     f"{f(a, 'decode_tokens_per_s', '.1f')} | {f(a, 'decode_speedup', '.2f')}x | "
                     f"{f(a, 'prefill_speedup', '.2f')}x | {f(a, 'greedy_tokens_equal_to_float32', 'd')} | "
                     f"{f(b, 'perplexity', '.2f')} | {f(b, 'kl', '.4f')} | {f(b, 'top1_agreement', '.1f')}% |")
    write_md(str(OUT), lines, note)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["quality", "timing", "report"], required=True)
    ap.add_argument("--windows", type=int, default=0, help="quality on the first N windows only (0: all)")
    ap.add_argument("--note")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    path = OUT.with_suffix(".json")
    results = json.loads(path.read_text()) if path.exists() else {}
    if args.part != "report":  # report: the .md rewritten from the .json
        results.update(quality(args) if args.part == "quality" else timing(args))
        path.write_text(json.dumps(results, indent=1))
    write(results, args.note)


if __name__ == "__main__":
    main()
