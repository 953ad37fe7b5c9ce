"""llama.cpp's side of benchmarks/decoder_peers.py, run in llama-cpp-python's OWN environment (not slimformer's):
one JSON command per stdin line, one JSON answer per stdout line.

  {"cmd": "load", "path": GGUF, "threads": 2, "n_ctx": 512}            -> {"ok": true, "version": ...}
  {"cmd": "gen", "prompt": [ids], "new": 128}                          -> {"prefill": ms, "decode": ms per token,
                                                                            "tokens": [...]}
  {"cmd": "logits", "windows": [[ids], ...], "out": DIR}               -> {"files": [...]} (float32 .npy, one per window)
  {"cmd": "text", "prompt": TEXT, "new": 32}                           -> {"text": the greedy continuation}
  {"cmd": "quantize", "src": GGUF, "dst": GGUF, "ftype": "Q8_0", "threads": 2}
                          -> {"rc": 0} (llama.cpp's own llama_model_quantize, as the llama-quantize tool calls it)

`gen` is a user's greedy generation (Llama.generate, temperature 0, top_k 1) after `reset()` (no prefix reuse):
prefill = the time to the first token, decode = the following `new` tokens' time over `new`.
"""

from __future__ import annotations

import ctypes
import json
import sys
import time

import llama_cpp
import numpy as np

state: dict = {}


def handle(msg: dict) -> dict:
    if msg["cmd"] == "load":
        common = dict(model_path=msg["path"], n_threads=msg["threads"], n_threads_batch=msg["threads"],
                      n_batch=512, verbose=False, seed=0)
        state["gen"] = llama_cpp.Llama(n_ctx=msg["n_ctx"], **common)
        state["score"] = llama_cpp.Llama(n_ctx=msg.get("score_ctx", 256), logits_all=True, **common)
        return {"ok": True, "version": llama_cpp.__version__}
    if msg["cmd"] == "gen":
        llm = state["gen"]
        llm.reset()
        times, tokens = [], []
        t0 = time.perf_counter()
        for tok in llm.generate(msg["prompt"], temp=0.0, top_k=1, reset=True):
            times.append(time.perf_counter())
            tokens.append(int(tok))
            if len(tokens) == msg["new"] + 1:
                break
        return {"prefill": (times[0] - t0) * 1e3, "decode": (times[-1] - times[0]) * 1e3 / msg["new"],
                "tokens": tokens}
    if msg["cmd"] == "logits":
        llm, files = state["score"], []
        for i, window in enumerate(msg["windows"]):
            llm.reset()
            llm.eval(window)
            path = f"{msg['out']}/w{i}.npy"
            np.save(path, np.asarray(llm.scores[: len(window)], dtype=np.float32))
            files.append(path)
        return {"files": files}
    if msg["cmd"] == "text":
        llm = state["gen"]
        llm.reset()
        out = llm.create_completion(msg["prompt"], max_tokens=msg["new"], temperature=0.0, top_k=1)
        return {"text": out["choices"][0]["text"]}
    if msg["cmd"] == "quantize":
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{msg['ftype']}")
        params.nthread = msg["threads"]
        rc = llama_cpp.llama_model_quantize(msg["src"].encode(), msg["dst"].encode(), ctypes.byref(params))
        return {"rc": int(rc), "version": llama_cpp.__version__}
    return {"error": f"unknown command {msg['cmd']!r}"}


for line in sys.stdin:
    print(json.dumps(handle(json.loads(line))), flush=True)
