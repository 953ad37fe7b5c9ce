"""Decoder peers on SmolLM2-135M-Instruct (issue 27), as users run a causal LM: batch 1, greedy, a KV cache,
2 threads, a 128-token prompt of real text (the WikiText-2 test slice's opening) and 128 new tokens.

Rows: stock PyTorch float32 (the original: the Q4_1 GGUF dequantized once, searcher/problem/gguf.py) and
bfloat16; slimformer's OpenVINO LLM runtime (searcher/devices/openvino_lm.py: the stateful IR, its own greedy
loop) in f32 and bf16, with NNCF INT8_ASYM and INT4_ASYM group 64 weights (whole model, NNCF's defaults),
and the f32, INT8_ASYM and INT4_ASYM folders opened by `openvino_genai.LLMPipeline` as users run it (its
default precision, apply_chat_template off); llama.cpp (llama-cpp-python, its own venv: LLAMA_PY) on the shipped
Q4_1 GGUF, on an F32 GGUF of the original and on a Q8_0 made from that F32 GGUF, driven through
benchmarks/_llamacpp_child.py. Every runner is timed in the same interleaved rounds
(devices/generate.measure_generation: warm-up, alternating order, an idle gap before every call); speedups
are medians of per-round ratios against PyTorch float32.

Quality (`--part quality`, no timing): on the WikiText-2 raw test slice (studies/data/wikitext2-test.jsonl,
SmolLM2's tokenizer, windows of 256 tokens advancing by 128, every token predicted once), perplexity and,
against PyTorch float32's next-token distributions, mean KL (nats per token) and top-1 agreement.

The llama.cpp rows, and how the F32 and Q8_0 GGUFs are made (`--part make-q8`): benchmarks/decoder_ggufs.py.

Run: LLAMA_CPP_SRC=.../vendor/llama.cpp CONVERT_PY=... /work/briefs/bin/heavy python -m benchmarks.decoder_peers --part make-q8
     /work/briefs/bin/heavy python -m benchmarks.decoder_peers --part quality [--rows 'llama.cpp']
     /work/briefs/bin/quiet python -m benchmarks.decoder_peers --part timing    (ROUNDS=8: ~7 min)
Writes benchmarks/results/decoder_peers_results.md and .json (each part fills its own columns; --rows recomputes the
quality of the rows whose names contain it, and the float32 reference, into the stored table; --part report
rewrites the .md from the .json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
import warnings
from pathlib import Path

warnings.simplefilter("ignore")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import RESULTS, write_md  # noqa: E402
from benchmarks.decoder_ggufs import LlamaCpp, cpp_paths, make_q8  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
THREADS, ROUNDS = 2, int(os.environ.get("ROUNDS", 8))
PROMPT, NEW = 128, 128
CONTEXT, STRIDE = 256, 128
GENAI = {  # GenAI row -> (IR, the OpenVINO row of the same IR at bf16, whose quality it shares)
    "OpenVINO GenAI LLMPipeline, default precision (bf16 here)": ("f32", "OpenVINO bf16 (its default on this CPU)"),
    "OpenVINO GenAI LLMPipeline, INT8_ASYM": ("int8_asym", "OpenVINO INT8_ASYM weights (bf16)"),
    "OpenVINO GenAI LLMPipeline, INT4_ASYM g64 (same IR)": ("int4_asym", "OpenVINO INT4_ASYM g64 weights (bf16)")}
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


def build(tmp: Path, keep, genai: bool = False):
    """The shared tokenizer, the original model, its bfloat16 copy, the OpenVINO IRs of the rows `keep`
    accepts (with the GenAI folders under `tmp` when `genai`), the OpenVINO rows and the runtime module."""
    from slimformer.searcher.devices import openvino_lm as lm
    from slimformer.searcher.problem.gguf import gguf_folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = gguf_folder("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    bf16 = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    ov_rows = {"OpenVINO f32": ("f32", "f32"), "OpenVINO bf16 (its default on this CPU)": ("f32", "bf16"),
               "OpenVINO INT8_ASYM weights (bf16)": ("int8_asym", "bf16"),
               "OpenVINO INT4_ASYM g64 weights (bf16)": ("int4_asym", "bf16"),
               PLAN_ROW: ("plan", "bf16")}
    ov_rows = {name: v for name, v in ov_rows.items() if keep(name)}
    need = {ir for ir, _ in ov_rows.values()} | ({ir for ir, _ in GENAI.values()} if genai else set())
    make = {"f32": {}, "int8_asym": {"weights": "int8_asym"}, "int4_asym": {"weights": "int4_asym", "group_size": 64},
            "plan": {"bits": PLAN_BITS, "group_size": 64}}
    irs = {ir: lm.convert_lm(model, **kw) for ir, kw in make.items() if ir in need}
    if genai:
        for ir, _ in GENAI.values():
            lm.save_lm(irs[ir], tmp / ir, model, tok)
    return tok, model, bf16, irs, ov_rows, lm


def quality(args) -> dict:
    from slimformer.searcher.problem.lmquality import next_token_agreement, stream_windows

    def keep(name):
        return not args.rows or args.rows in name

    with tempfile.TemporaryDirectory() as tmp:
        tok, model, bf16, irs, ov_rows, lm = build(Path(tmp), keep)
        batches = stream_windows(tok, texts(), CONTEXT, STRIDE, batch_size=1)
        if args.windows:
            batches = batches[: args.windows]
        windows = [b["input_ids"][0].tolist() for b in batches]
        scorers = {BASE: lambda ids: model(input_ids=ids).logits[0],
                   "PyTorch bfloat16": lambda ids: bf16(input_ids=ids).logits[0].float()}
        for name, (ir, prec) in ov_rows.items():
            s = lm.OVScorer(lm.load_lm(irs[ir], THREADS, prec, last_logits=False))
            scorers[name] = lambda ids, s=s: s(input_ids=ids).logits[0]
        scorers = {name: f for name, f in scorers.items() if name == BASE or keep(name)}
        cpp_logits = {}
        for name, path in cpp_paths().items():
            if keep(name):
                cpp = LlamaCpp(path, THREADS, NEW, CONTEXT)
                cpp_logits[name] = cpp.logits(windows)
                cpp.proc.kill()
        stats = {name: {"nll": 0.0, "kl": 0.0, "same": 0.0, "n": 0} for name in [*scorers, *cpp_logits]}
        t0 = time.time()
        with torch.inference_mode():
            for w, b in enumerate(batches):
                ids, labels = b["input_ids"], b["labels"][0]
                keep_pos = labels[1:] != -100
                ref = None
                for name in stats:
                    logits = cpp_logits[name][w] if name in cpp_logits else scorers[name](ids)
                    logits = logits[:-1].float()
                    ref = logits if ref is None else ref
                    nll = torch.nn.functional.cross_entropy(logits[keep_pos], labels[1:][keep_pos], reduction="sum")
                    kl, same, n = next_token_agreement(ref, logits, keep_pos)
                    s = stats[name]
                    s["nll"] += float(nll)
                    s["kl"] += kl
                    s["same"] += same
                    s["n"] += n
    out = {name: {"perplexity": math.exp(s["nll"] / s["n"]), "kl": s["kl"] / s["n"],
                  "top1_agreement": 100 * s["same"] / s["n"], "tokens": s["n"]} for name, s in stats.items()}
    print(f"quality: {len(batches)} windows, {time.time() - t0:.0f} s")
    return {"quality": out, "windows": len(batches)}


def timing(args) -> dict:
    from slimformer.searcher.devices.generate import Generation, measure_generation, prompt_ids, tokens_per_s

    tb = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tok, model, bf16, irs, ov_rows, lm = build(Path(tmp), lambda name: True, genai=True)
        prompt = prompt_ids(tok, PROMPT, " ".join(texts()[1:6]))
        runners = {BASE: Generation(model, prompt, NEW), "PyTorch bfloat16": Generation(bf16, prompt, NEW)}
        for name, (ir, prec) in ov_rows.items():
            runners[name] = lm.OVGeneration(lm.load_lm(irs[ir], THREADS, prec), prompt, NEW)
        for name, (ir, _) in GENAI.items():
            runners[name] = GenAI(Path(tmp) / ir, prompt)
        cpps = []
        for name, path in cpp_paths().items():
            cpp = runners[name] = LlamaCpp(path, THREADS, NEW, CONTEXT)
            cpp.prompt = prompt[0].tolist()
            cpps.append(cpp)
        ref = runners[BASE].tokens()
        t0 = time.time()
        print(f"timing: {len(runners)} runners built in {t0 - tb:.0f} s", flush=True)
        res = measure_generation(runners, baseline=BASE, rounds=ROUNDS, warmup=1, threads=THREADS)
        wall = time.time() - t0
        for cpp in cpps:
            cpp.proc.kill()
        agree = {}
        for name, r in runners.items():
            got = r.tokens() if hasattr(r, "tokens") and callable(r.tokens) else r.tokens
            agree[name] = next((i for i, (a, b) in enumerate(zip(ref, got)) if a != b), min(len(ref), len(got)))
        backends = sorted({r.backend for r in runners.values() if isinstance(r, GenAI)})
    out = {}
    for name in runners:
        p, d = res["prefill"][name], res["decode"][name]
        out[name] = {"prefill_ms": p.median_ms, "prefill_speedup": p.speedup, "decode_ms": d.median_ms,
                     "decode_tokens_per_s": tokens_per_s(d.median_ms), "decode_speedup": d.speedup,
                     "greedy_tokens_equal_to_float32": agree[name]}
    print(f"timing: {ROUNDS} rounds, {wall:.0f} s")
    return {"timing": out, "rounds": ROUNDS, "llama_cpp": cpps[0].version, "timing_wall_s": round(wall),
            "genai_backend": ", ".join(backends)}


def write(results: dict, note: str | None) -> None:
    import openvino
    import transformers

    q, t = dict(results.get("quality", {})), results.get("timing", {})
    q.update({name: q[row] for name, (_, row) in GENAI.items() if row in q})  # GenAI: its IR's quality
    lines = ["# Decoder peers: SmolLM2-135M-Instruct, batch 1, greedy, 2 threads, 128-token prompt, 128 new tokens",
             "",
             "Machine: AMD EPYC (family 25 model 17), 2 cores, no GPU; flags avx2 avx512f avx512bw avx512vl "
             "avx512_vnni avx512_bf16, no AMX.",
             "",
             f"torch {torch.__version__}, transformers {transformers.__version__}, OpenVINO {openvino.__version__}, "
             f"llama-cpp-python {results.get('llama_cpp', '?')} (own venv; GGML_NATIVE=OFF, AVX512, VNNI, BF16). "
             f"Timing: {results.get('rounds', '?')} interleaved rounds after 1 warm-up ({results.get('timing_wall_s', '?')} s); "
             f"quality: WikiText-2 raw test slice, {results.get('windows', '?')} windows of {CONTEXT} tokens, stride {STRIDE}. "
             f"GenAI: {results.get('genai_backend', '?')}, its default precision, greedy, apply_chat_template off; "
             "a GenAI row's quality is that of its IR's OpenVINO bf16 row. OpenVINO rows: the CPU plugin's defaults (u8 KV cache, activations of compressed "
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
    lines += made_lines(results.get("gguf_made")) + best_peer_lines(q, t)
    write_md(str(OUT), lines, note)


def made_lines(made: dict | None) -> list[str]:
    if not made:
        return []
    files = made["files"]
    out = ["", "## The llama.cpp GGUFs", "",
           f"The original is the float32 dequantization of the shipped Q4_1 GGUF (`{made['source']}`; "
           "searcher/problem/gguf.py): the shipped file stores those weights in Q4_1 blocks (its token embedding, "
           "tied to the LM head, in Q8_0), and llama.cpp computes on them with its Q4_1 kernels (activations in "
           "8 bits), so the Q4_1 row is not bit-exact. The F32 GGUF holds the original's weights exactly; the Q8_0 "
           "is quantized from it, not from the Q4_1 file (re-quantizing that would copy Q4_1's rounding).", "",
           f"- F32: `{made['convert']}` ({made['convert_s']} s)",
           f"- Q8_0: `{made['quantize']}` ({made['quantize_s']} s)", ""]
    out += [f"- {name}: {f['bytes'] / 2**20:.1f} MiB, sha256 {f['sha256'][:16]}..., greedy continuations: "
            + " / ".join(json.dumps(x) for x in made["text"][name]) for name, f in files.items()]
    return out


def best_peer_lines(q: dict, t: dict) -> list[str]:
    """The issue's target: the fastest-decoding peer whose perplexity is within 10% of the original's."""
    if BASE not in q or not t:
        return []
    limit = 1.1 * q[BASE]["perplexity"]
    ok = [n for n in t if n in q and n != PLAN_ROW and q[n]["perplexity"] <= limit]
    best = max(ok, key=lambda n: t[n]["decode_tokens_per_s"])
    b = t[best]
    return ["", "## The target", "",
            f"Peers within 10% of the original's perplexity ({q[BASE]['perplexity']:.2f}, limit {limit:.2f}): "
            + ", ".join(f"{n} {t[n]['decode_tokens_per_s']:.1f} tokens/s" for n in
                        sorted(ok, key=lambda n: -t[n]["decode_tokens_per_s"])) + ".",
            "",
            f"Best: **{best}**, {b['decode_tokens_per_s']:.1f} tokens/s, prefill {b['prefill_ms']:.1f} ms, perplexity "
            f"{q[best]['perplexity']:.2f}. A slimformer export meets the issue's target with at least "
            f"**{1.5 * b['decode_tokens_per_s']:.1f} tokens/s** ({1.5 * b['decode_tokens_per_s'] / t[BASE]['decode_tokens_per_s']:.2f}x "
            f"PyTorch float32's {t[BASE]['decode_tokens_per_s']:.1f}), a prefill of at most {b['prefill_ms']:.1f} ms "
            f"and a perplexity of at most {limit:.2f}."] + ov_gap_lines(ok, t, 1.5 * b["decode_tokens_per_s"])


def ov_gap_lines(ok: list[str], t: dict, target: float) -> list[str]:
    """How far the fastest OpenVINO row within the perplexity limit is from `target` tokens/s."""
    ov = [n for n in ok if n.startswith("OpenVINO")]
    if not ov:
        return []
    n = max(ov, key=lambda n: t[n]["decode_tokens_per_s"])
    need = 1e3 / target
    return ["", f"In ms per generated token the target is {need:.2f} ms. The fastest OpenVINO row within the limit, "
            f"{n}, decodes in {t[n]['decode_ms']:.2f} ms (prefill {t[n]['prefill_ms']:.1f} ms): an OpenVINO export "
            f"needs {t[n]['decode_ms'] / need:.2f}x less time per token than that whole-model int8 model, i.e. "
            f"{100 * (1 - need / t[n]['decode_ms']):.0f}% of its per-token time removed by pruning (depth, FFN, "
            "heads) and bits, at a perplexity within the limit."]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["make-q8", "quality", "timing", "report"], required=True)
    ap.add_argument("--windows", type=int, default=0, help="quality on the first N windows only (0: all)")
    ap.add_argument("--rows", default="", help="quality of the rows whose names contain this only (merged)")
    ap.add_argument("--dry", action="store_true", help="print, write nothing (a check of the code path)")
    ap.add_argument("--note")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    path = OUT.with_suffix(".json")
    results = json.loads(path.read_text()) if path.exists() else {}
    if args.part != "report":  # report: the .md rewritten from the .json
        got = make_q8(THREADS) if args.part == "make-q8" else quality(args) if args.part == "quality" else timing(args)
        if args.dry:
            print(json.dumps(got, indent=1))
            return
        if args.rows and "quality" in results:
            if results.get("windows") != got["windows"]:
                raise SystemExit(f"--rows: {got['windows']} windows here, {results.get('windows')} in the table")
            got["quality"] = {**results["quality"], **got["quality"]}
        results.update(got)
        path.write_text(json.dumps(results, indent=1))
    write(results, args.note)


if __name__ == "__main__":
    main()
