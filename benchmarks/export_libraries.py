"""Does an export load where users work, and give the figure slimformer reported? (issue 28)

Exports the uncompressed all-MiniLM-L6-v2 (`minilm-l6`, an empty plan: no stored study is at hand)
through `export_model`, as onnx and as openvino, with STS-B dev (studies/data/sts-dev.tsv, the
quickstart's test split) as the validation split, so the export's own verification scores it
there. Then, in a FRESH process that never imports slimformer, loads each folder with the three
lines of its model card, `SentenceTransformer(path, backend="onnx" | "openvino")`, and computes the
Spearman x100 of cosine similarities on the same pairs.

sentence-transformers' onnx/openvino backends need Optimum, which cannot live in slimformer's
environment (optimum-onnx 0.1.0: transformers<4.58; optimum-intel 2.2.0: transformers<5.6,
huggingface-hub<1.22), so each loads from its own venv (made with --system-site-packages, torch pinned
to the installed 2.13.0 so that nothing heavy is downloaded):
  /tmp/st-onnx:     sentence-transformers 5.7.0, optimum-onnx[onnxruntime] 0.1.0, transformers 4.57.6,
                    huggingface-hub 0.36.2, datasets 5.0.1
  /tmp/st-openvino: sentence-transformers 6.3.0 (system), optimum-intel[openvino] 2.2.0, optimum 2.3.0,
                    transformers 5.5.4, huggingface-hub 1.21.0, datasets 5.0.1; torchvision removed (its
                    PyPI wheel does not match the CPU torch: "operator torchvision::nms does not exist")
`--make-venvs` creates them with these pins. Not a timing run, but CPU heavy:
  flock /tmp/slimformer-timing.lock python benchmarks/export_libraries.py [--make-venvs]
Writes benchmarks/export_libraries_results.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "studies" / "data" / "sts-dev.tsv"
VENVS = {"onnx": Path("/tmp/st-onnx"), "openvino": Path("/tmp/st-openvino")}
PINS = {"onnx": ["sentence-transformers>=5,<6", "optimum-onnx[onnxruntime]==0.1.0", "transformers<4.58", "datasets",
                 "huggingface_hub<1", "torch==2.13.0"],
        "openvino": ["optimum-intel[openvino]==2.2.0", "transformers<5.6", "huggingface-hub<1.22", "datasets",
                     "torch==2.13.0"]}

LOADER = r"""
import csv, json, sys, time
import numpy as np
from scipy.stats import spearmanr
path, backend, data = sys.argv[1:]
card = open(f"{path}/README.md").read()
kwargs = {}
if backend == "openvino":  # the card's settings: what the speed was measured with
    manifest = json.load(open(f"{path}/manifest.json"))
    ov = {**manifest["compile_config"], "INFERENCE_NUM_THREADS": manifest["timed_on"]["threads"]}
    kwargs = {"model_kwargs": {"ov_config": ov}}
t0 = time.time()
from sentence_transformers import SentenceTransformer
model = SentenceTransformer(path, backend=backend, device="cpu", **kwargs)
rows = [r for r in csv.reader(open(data), delimiter="\t", quoting=csv.QUOTE_NONE)]
s1, s2, gold = [r[5] for r in rows], [r[6] for r in rows], [float(r[4]) for r in rows]
a = model.encode(s1, batch_size=32, convert_to_numpy=True)
b = model.encode(s2, batch_size=32, convert_to_numpy=True)
cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
assert "slimformer" not in sys.modules
import importlib.metadata as md
versions = {}
for d in ("sentence-transformers", "transformers", "optimum", "optimum-onnx", "optimum-intel", "onnxruntime",
          "openvino", "torch"):
    try:
        versions[d] = md.version(d)
    except md.PackageNotFoundError:
        pass
print(json.dumps({"spearman": float(spearmanr(cos, gold).statistic * 100), "pairs": len(gold),
                  "model_class": type(model[0].auto_model).__name__, "modules": [type(m).__name__ for m in model],
                  "seconds": time.time() - t0, "versions": versions}))
"""


def make_venv(fmt: str) -> None:
    venv = VENVS[fmt]
    subprocess.run([sys.executable, "-m", "venv", str(venv), "--system-site-packages"], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *PINS[fmt]], check=True)
    if fmt == "openvino":
        subprocess.run([str(venv / "bin" / "pip"), "uninstall", "-y", "-q", "torchvision"], check=False)


def export(fmt: str, out: Path) -> dict:
    """The uncompressed MiniLM exported by slimformer's own export_model; returns its manifest."""
    import yaml
    from slimformer.methods import Plan
    from slimformer.searcher.config import load_study_config
    from slimformer.searcher.devices.artifacts import export_model
    from slimformer.searcher.problem.workbench import Workbench

    study = yaml.safe_load((ROOT / "studies" / "quickstart.yaml").read_text())
    study["data"] = {**study["data"], "validation": str(DATA), "test": str(DATA),
                     "calibration": str(ROOT / "studies" / "data" / "sts-train-1k.tsv")}
    study["device"] = {**study["device"], "runtime": "onnxruntime" if fmt == "onnx" else "openvino"}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "study.yaml"
        path.write_text(yaml.safe_dump(study))
        bench = Workbench(load_study_config(path), log=print)
    plan = Plan()
    model = bench.build(plan)
    export_model(fmt, bench, model, plan, out, {"metric": "spearman"}, force=True)
    return json.loads((out / "manifest.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--make-venvs", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "export_libraries_results.md"))
    args = ap.parse_args()
    from slimformer.searcher.devices.latency import device_facts

    facts = device_facts()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("onnx", "openvino"):
            if args.make_venvs or not (VENVS[fmt] / "bin" / "python").exists():
                make_venv(fmt)
            folder = Path(tmp) / f"minilm-{fmt}"
            t0 = time.time()
            manifest = export(fmt, folder)
            export_s = time.time() - t0
            res = subprocess.run([str(VENVS[fmt] / "bin" / "python"), "-c", LOADER, str(folder), fmt, str(DATA)],
                                 capture_output=True, text=True, timeout=900)
            if res.returncode != 0:
                raise SystemExit(f"{fmt}: the load failed:\n{res.stderr[-3000:]}")
            got = json.loads(res.stdout.strip().splitlines()[-1])
            check = manifest["verification"]
            rows.append({"fmt": fmt, "files": sorted(manifest["files"]), "slimformer": check["quality"],
                         "baseline": check["baseline_quality"], "scored_diff": check["scored_max_abs_diff"],
                         "export_s": export_s, **got})
            print(fmt, json.dumps(rows[-1], default=str))
    lines = ["# Exports loaded where users work (benchmarks/export_libraries.py)", "",
             f"CPU: {facts['cpu']}; flags: {' '.join(facts['flags'])}; {facts['cores']} cores", "",
             "The uncompressed all-MiniLM-L6-v2 (`minilm-l6`, empty plan) exported by `export_model` as onnx and as "
             "openvino; each folder loaded in a fresh process that never imports slimformer, with the model card's "
             "lines `SentenceTransformer(path, backend=...)` (openvino with the card's ov_config), in its own venv "
             "(see the script's docstring). STS-B dev, 1,500 pairs (studies/data/sts-dev.tsv), Spearman x100 of "
             "cosine similarities. slimformer's figure: the export's verification (the artifact scored by "
             "slimformer's task code on the same file).", "",
             "| format | loaded by | modules | slimformer | sentence-transformers | difference | PyTorch baseline | "
             "export check (pooled, real tokens) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['fmt']} | {r['model_class']} | {' > '.join(r['modules'])} | {r['slimformer']:.4f} | "
                     f"{r['spearman']:.4f} | {r['spearman'] - r['slimformer']:+.4f} | {r['baseline']:.4f} | "
                     f"{r['scored_diff']:.2e} |")
    lines += ["", "Versions in each loader's venv:", ""]
    lines += [f"- {r['fmt']}: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()) for r in rows]
    lines += ["", "Files of each export:", ""] + [f"- {r['fmt']}: {', '.join(r['files'])}" for r in rows]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
