"""Does an export load where users work, and give the figure slimformer reported? (issue 28)

Two modes.

Without --artifact: exports the uncompressed all-MiniLM-L6-v2 (`minilm-l6`, an empty plan) through
`export_model`, as onnx and as openvino, with STS-B dev (studies/data/sts-dev.tsv, the quickstart's
test split) as the validation split, and loads each folder with sentence-transformers
(benchmarks/results/export_libraries_results.md).

With --artifact LABEL=DIR (repeatable) and --task sts|sst2: the folders `slimformer export` wrote
(e.g. of a finished quickstart, or of the SST-2 classifier study) are loaded, each in a FRESH process
that never imports slimformer (asserted), by every loader of its task and format:
  sts:  SentenceTransformer(DIR, backend=fmt) (openvino with the card's ov_config), and Optimum's
        ORTModelForFeatureExtraction / OVModelForFeatureExtraction.from_pretrained(DIR) with mean
        pooling over real tokens and normalisation done in the loader (max_length from the folder's
        sentence_bert_config.json); Spearman x100 of cosine similarities on STS-B dev (the
        quickstart's test split, 1,500 pairs);
  sst2: Optimum's ORTModelForSequenceClassification / OVModelForSequenceClassification
        .from_pretrained(DIR) and AutoTokenizer (truncation at the max_length the card states);
        accuracy x100 on SST-2 dev (studies/data/sst2-dev.tsv, 872 sentences: the study's validation
        split in full; the study has no test split).
Each loader also tries `AutoModel.from_pretrained(DIR)` (torch): it must fail (no PyTorch weights),
never build the unpruned shape. slimformer's figure: the same folder opened by slimformer
(sha256-checked) and scored by the study's task code on the same file (`--study`: the study file
the export came from, for its tokenizer, task and baseline model); the report's figure (the
trial's test or validation quality in PyTorch, from the manifest) beside it.

sentence-transformers' onnx/openvino backends and Optimum's classes cannot live in slimformer's
environment (optimum-onnx 0.1.0: transformers<4.58; optimum-intel 2.2.0: transformers<5.6,
huggingface-hub<1.22), so each format loads from its own venv (made with --system-site-packages,
torch pinned to the installed 2.13.0 so that nothing heavy is downloaded):
  /tmp/st-onnx:     sentence-transformers 5.x, optimum-onnx[onnxruntime] 0.1.0, transformers 4.57.x,
                    huggingface-hub 0.36.x, datasets
  /tmp/st-openvino: sentence-transformers 6.3.0 (system), optimum-intel[openvino] 2.2.0, optimum 2.3.0,
                    transformers 5.5.x, huggingface-hub 1.21.x, datasets; torchvision removed (its
                    PyPI wheel does not match the CPU torch: "operator torchvision::nms does not exist")
`--make-venvs` creates them with these pins; the versions each load saw go into the results file.
Not a timing run, but CPU heavy:
  /work/briefs/bin/heavy python -m benchmarks.export_libraries [--make-venvs]
  /work/briefs/bin/heavy python -m benchmarks.export_libraries --task sts --study S/quickstart.yaml \
      --artifact onnx=DIR1 --artifact openvino=DIR2 [--out FILE]
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
SST2 = ROOT / "studies" / "data" / "sst2-dev.tsv"
VENVS = {"onnx": Path("/tmp/st-onnx"), "openvino": Path("/tmp/st-openvino")}
PINS = {"onnx": ["sentence-transformers>=5,<6", "optimum-onnx[onnxruntime]==0.1.0", "transformers<4.58", "datasets",
                 "huggingface_hub<1", "torch==2.13.0"],
        "openvino": ["optimum-intel[openvino]==2.2.0", "transformers<5.6", "huggingface-hub<1.22", "datasets",
                     "torch==2.13.0"]}
LOADERS = {"sts": ["sentence-transformers", "optimum"], "sst2": ["optimum"]}
DEFAULT_STUDY = {"sts": ROOT / "studies" / "quickstart.yaml", "sst2": ROOT / "studies" / "minilm-sst2.yaml"}

# the loader runs in the venv: argv = folder, format, loader, task, data file
LOADER = r"""
import csv, json, sys, time
import numpy as np
path, fmt, loader, task, data = sys.argv[1:]
manifest = json.load(open(f"{path}/manifest.json"))
ov = None
if fmt == "openvino" and manifest.get("compile_config"):  # the card's settings: what the speed was measured with
    ov = {**manifest["compile_config"], "INFERENCE_NUM_THREADS": manifest["timed_on"]["threads"]}
t0 = time.time()
call = ""
if task == "sts":
    rows = [r for r in csv.reader(open(data), delimiter="\t", quoting=csv.QUOTE_NONE)]
    s1, s2, gold = [r[5] for r in rows], [r[6] for r in rows], np.array([float(r[4]) for r in rows])
else:
    rows = list(csv.DictReader(open(data), delimiter="\t", quoting=csv.QUOTE_NONE))
    texts, gold = [r["content"] for r in rows], np.array([int(r["label"]) for r in rows])
if loader == "sentence-transformers":
    from sentence_transformers import SentenceTransformer
    kwargs = {"model_kwargs": {"ov_config": ov}} if ov else {}
    model = SentenceTransformer(path, backend=fmt, device="cpu", **kwargs)
    call = f"SentenceTransformer(path, backend={fmt!r}" + (", model_kwargs={'ov_config': ...})" if ov else ")")
    encode = lambda s: model.encode(s, batch_size=32, convert_to_numpy=True)
    loaded = {"class": type(model[0].auto_model).__name__, "modules": [type(m).__name__ for m in model]}
else:
    from transformers import AutoTokenizer
    if task == "sts":
        name = "ORTModelForFeatureExtraction" if fmt == "onnx" else "OVModelForFeatureExtraction"
    else:
        name = "ORTModelForSequenceClassification" if fmt == "onnx" else "OVModelForSequenceClassification"
    module = "optimum.onnxruntime" if fmt == "onnx" else "optimum.intel"
    cls = getattr(__import__(module, fromlist=[name]), name)
    kwargs = {"ov_config": ov} if ov else {}
    tries = [{}] + ([{"subfolder": "openvino"}] if fmt == "openvino" and task == "sts" else [])
    errors = []
    for extra in tries:  # the plain call first; record what it said if it did not open the folder
        try:
            model = cls.from_pretrained(path, **extra, **kwargs)
            call = f"{name}.from_pretrained(path" + "".join(f", {k}={v!r}" for k, v in extra.items()) + \
                (", ov_config=...)" if ov else ")")
            break
        except Exception as e:
            errors.append(f"{name}.from_pretrained(path, **{extra}): {type(e).__name__}: {str(e)[:300]}")
    else:
        raise SystemExit("\n".join(errors))
    tok = AutoTokenizer.from_pretrained(path)
    if task == "sts":
        max_length = json.load(open(f"{path}/sentence_bert_config.json"))["max_seq_length"]
    else:
        max_length = manifest.get("max_length") or json.load(open(f"{path}/config.json"))["slimformer"].get("max_length")
    import torch
    def run(batch):
        enc = tok(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.inference_mode():
            out = model(**enc)
        if task != "sts":
            return out.logits.numpy()
        mask = enc["attention_mask"].unsqueeze(-1).float()
        pooled = (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1).numpy()
    encode = lambda s: np.concatenate([run(s[i:i + 32]) for i in range(0, len(s), 32)])
    loaded = {"class": type(model).__name__, "modules": ["mean pooling + normalize (script)"] if task == "sts" else [],
              "max_length": max_length, "plain_call_failed": errors}
if task == "sts":
    from scipy.stats import spearmanr
    a, b = encode(s1), encode(s2)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    figure = float(spearmanr(cos, gold).statistic * 100)
else:
    figure = float((encode(texts).argmax(-1) == gold).mean() * 100)
seconds = time.time() - t0
try:  # the torch route: no PyTorch weights in the folder, so it must fail, never build the unpruned model
    from transformers import AutoModel
    AutoModel.from_pretrained(path)
    torch_load = "BUILT A MODEL"
except Exception as e:
    torch_load = f"refused ({type(e).__name__})"
assert "slimformer" not in sys.modules
import importlib.metadata as md
versions = {}
for d in ("sentence-transformers", "transformers", "optimum", "optimum-onnx", "optimum-intel", "onnxruntime",
          "openvino", "huggingface-hub", "torch"):
    try:
        versions[d] = md.version(d)
    except md.PackageNotFoundError:
        pass
print(json.dumps({"figure": figure, "n": len(gold), "call": call, "seconds": seconds, "torch_load": torch_load,
                  "versions": versions, **loaded}))
"""

# the uncompressed mode's loader (sentence-transformers only; kept as the published table was made)
LEGACY = ("sentence-transformers", "sts")


def make_venv(fmt: str) -> None:
    venv = VENVS[fmt]
    subprocess.run([sys.executable, "-m", "venv", str(venv), "--system-site-packages"], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *PINS[fmt]], check=True)
    if fmt == "openvino":
        subprocess.run([str(venv / "bin" / "pip"), "uninstall", "-y", "-q", "torchvision"], check=False)


def venv_size(fmt: str) -> str:
    out = subprocess.run(["du", "-sh", str(VENVS[fmt])], capture_output=True, text=True).stdout.split()
    return out[0] if out else "?"


def load_in_venv(folder: Path, fmt: str, loader: str, task: str, data: Path) -> dict:
    res = subprocess.run([str(VENVS[fmt] / "bin" / "python"), "-c", LOADER, str(folder), fmt, loader, task, str(data)],
                         capture_output=True, text=True, timeout=1800)
    if res.returncode != 0:
        raise SystemExit(f"{folder} ({fmt}, {loader}): the load failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def workbench(study_path: Path, split: Path, runtime: str | None = None):
    """The study's Workbench with `split` as its validation and test file (slimformer's task code)."""
    import yaml
    from slimformer.searcher.config import load_study_config
    from slimformer.searcher.problem.workbench import Workbench

    study = yaml.safe_load(study_path.read_text())
    data = {**study["data"], "validation": str(split), "test": str(split)}
    data.pop("validation_size", None)
    if data.get("calibration") and not Path(data["calibration"]).is_absolute():  # relative to the study file
        data["calibration"] = str(study_path.resolve().parent / data["calibration"])
    study["data"] = data
    if runtime:
        study["device"] = {**study["device"], "runtime": runtime}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / study_path.name
        path.write_text(yaml.safe_dump(study))
        return Workbench(load_study_config(path), log=lambda *a, **k: None)


def slimformer_figure(bench, folder: Path) -> float:
    """The folder opened by slimformer (every file checked against its sha256), scored on the split."""
    from slimformer.searcher.devices.artifacts import ArtifactModel, open_artifact

    _, session = open_artifact(folder, bench.cfg.device.threads)
    return bench.quality(ArtifactModel(session, bench.model.config), full=True)["quality"]


def export(fmt: str, out: Path) -> dict:
    """The uncompressed MiniLM exported by slimformer's own export_model; returns its manifest."""
    from slimformer.methods import Plan
    from slimformer.searcher.devices.artifacts import export_model

    bench = workbench(ROOT / "studies" / "quickstart.yaml", DATA, "onnxruntime" if fmt == "onnx" else "openvino")
    plan = Plan()
    model = bench.build(plan)
    export_model(fmt, bench, model, plan, out, {"metric": "spearman"}, force=True)
    return json.loads((out / "manifest.json").read_text())


def cpu_line(facts: dict) -> str:
    """The CPU model (family/model from /proc/cpuinfo) and the ISA flags that matter here, AMX said either way."""
    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    have = set(info.get("flags", "").split())
    wanted = ["avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
              "amx_int8"]
    model = f" (family {info['cpu family']} model {info['model']})" if "cpu family" in info and "model" in info else ""
    flags = [f for f in wanted if f in have] or list(facts.get("flags") or [])
    return (f"CPU: {facts['cpu']}{model}, {facts['cores']} cores; ISA flags {' '.join(flags)}"
            + ("" if any(f.startswith("amx") for f in flags) else " (no AMX)"))


def header(facts: dict) -> list[str]:
    return ["# Exports loaded where users work (benchmarks/export_libraries.py)", "", cpu_line(facts), ""]


def versions_lines(rows: list[dict]) -> list[str]:
    seen, lines = set(), ["", "Versions in each loader's venv (size: `du -sh` of the venv, which is made with "
                          "--system-site-packages, so only what it adds):", ""]
    for r in rows:
        if r["fmt"] not in seen:
            seen.add(r["fmt"])
            lines.append(f"- {r['fmt']} ({VENVS[r['fmt']]}, {venv_size(r['fmt'])}): "
                         + ", ".join(f"{k} {v}" for k, v in r["versions"].items()))
    return lines


def run_artifacts(args, facts: dict) -> list[str]:
    task = args.task
    data = Path(args.data) if args.data else (DATA if task == "sts" else SST2)
    study = Path(args.study) if args.study else DEFAULT_STUDY[task]
    bench = workbench(study, data)
    rows = []
    for spec in args.artifact:
        label, _, folder = spec.partition("=")
        folder = Path(folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        fmt = manifest["format"]
        mine = slimformer_figure(bench, folder)
        trial = manifest.get("trial") or {}
        for loader in LOADERS[task]:
            got = load_in_venv(folder, fmt, loader, task, data)
            rows.append({"label": label, "fmt": fmt, "loader": loader, "slimformer": mine, "trial": trial,
                         "manifest": manifest, **got})
            print(label, loader, json.dumps({k: v for k, v in rows[-1].items() if k != "manifest"}, default=str))
    metric = "Spearman x100 of cosine similarities" if task == "sts" else "accuracy x100"
    lines = header(facts) + [
        f"Task {task}: {metric} on {data.relative_to(ROOT) if data.is_relative_to(ROOT) else data} "
        f"({rows[0]['n'] if rows else '?'} {'pairs' if task == 'sts' else 'sentences'}). Each folder written by "
        "`slimformer export`, loaded in a fresh process that never imports slimformer (asserted), in its format's "
        "own venv. slimformer: the same folder opened by slimformer (sha256-checked) and scored by the study's "
        f"task code on the same file (study {study.name}). Report: the trial's figure in the study "
        f"({'test, PyTorch' if task == 'sts' else 'validation, PyTorch'}).", "",
        "| export | plan | format | loaded by | call | slimformer | library | difference | report | torch load |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        plan = r["manifest"].get("plan") or {}
        words = (f"{len(plan['layers']) if plan.get('layers') else 'all'} layers, heads {plan.get('heads')}, "
                 f"ffn {plan.get('ffn')}, bits {sorted(set(plan['bits'])) if isinstance(plan.get('bits'), list) else plan.get('bits')}, "
                 f"int8 {r['manifest'].get('int8_scheme') or '-'}")
        report = r["trial"].get("test_quality") if task == "sts" else r["trial"].get("quality")
        lines.append(f"| {r['label']} | {words} | {r['fmt']} | {r['class']} | `{r['call']}` | {r['slimformer']:.4f} | "
                     f"{r['figure']:.4f} | {r['figure'] - r['slimformer']:+.4f} | "
                     f"{report if report is None else format(report, '.4f')} | {r['torch_load']} |")
    fails = [f"- {r['label']} {r['loader']}: {e}" for r in rows for e in r.get("plain_call_failed") or []]
    if fails:
        lines += ["", "Plain calls that did not open the folder (the loader then tried the next call):", "", *fails]
    lines += versions_lines(rows)
    lines += ["", "Files of each export:", ""]
    done = set()
    for r in rows:
        if r["label"] not in done:
            done.add(r["label"])
            m = r["manifest"]
            lines.append(f"- {r['label']}: {', '.join(sorted(m['files']))}"
                         + (f"; compile_config {json.dumps(m['compile_config'])}" if m.get("compile_config") else ""))
    return lines


def run_uncompressed(args, facts: dict) -> list[str]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("onnx", "openvino"):
            folder = Path(tmp) / f"minilm-{fmt}"
            t0 = time.time()
            manifest = export(fmt, folder)
            export_s = time.time() - t0
            got = load_in_venv(folder, fmt, *LEGACY, DATA)
            check = manifest["verification"]
            rows.append({"fmt": fmt, "files": sorted(manifest["files"]), "slimformer": check["quality"],
                         "baseline": check["baseline_quality"], "scored_diff": check["scored_max_abs_diff"],
                         "export_s": export_s, **got})
            print(fmt, json.dumps(rows[-1], default=str))
    lines = header(facts) + [
        "The uncompressed all-MiniLM-L6-v2 (`minilm-l6`, empty plan) exported by `export_model` as onnx and as "
        "openvino; each folder loaded in a fresh process that never imports slimformer, with the model card's "
        "lines `SentenceTransformer(path, backend=...)` (openvino with the card's ov_config), in its own venv "
        "(see the script's docstring). STS-B dev, 1,500 pairs (studies/data/sts-dev.tsv), Spearman x100 of "
        "cosine similarities. slimformer's figure: the export's verification (the artifact scored by "
        "slimformer's task code on the same file).", "",
        "| format | loaded by | modules | slimformer | sentence-transformers | difference | PyTorch baseline | "
        "export check (pooled, real tokens) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['fmt']} | {r['class']} | {' > '.join(r['modules'])} | {r['slimformer']:.4f} | "
                     f"{r['figure']:.4f} | {r['figure'] - r['slimformer']:+.4f} | {r['baseline']:.4f} | "
                     f"{r['scored_diff']:.2e} |")
    lines += versions_lines(rows)
    lines += ["", "Files of each export:", ""] + [f"- {r['fmt']}: {', '.join(r['files'])}" for r in rows]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--make-venvs", action="store_true")
    ap.add_argument("--artifact", action="append", default=[], metavar="LABEL=DIR",
                    help="an export folder to load (repeatable); without it the uncompressed MiniLM is exported")
    ap.add_argument("--task", choices=sorted(LOADERS), default="sts")
    ap.add_argument("--study", help="the study file the exports came from (default: the shipped one of the task)")
    ap.add_argument("--data", help="the file scored (default: STS-B dev for sts, SST-2 dev for sst2)")
    ap.add_argument("--out", help="results file (default benchmarks/results/export_libraries[_TASK]_results.md)")
    args = ap.parse_args()
    from slimformer.searcher.devices.latency import device_facts

    for fmt in ("onnx", "openvino"):
        if args.make_venvs or not (VENVS[fmt] / "bin" / "python").exists():
            make_venv(fmt)
    facts = device_facts()
    lines = run_artifacts(args, facts) if args.artifact else run_uncompressed(args, facts)
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / (
        f"export_libraries_{args.task}_results.md" if args.artifact else "export_libraries_results.md")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
