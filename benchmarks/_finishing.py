"""What the finishing benchmarks (finish.py, finish_recipe.py) share: their two studies and the
package loaded up front.

- `stsb`: studies/quickstart.yaml as shipped (validation = 500 STS-B train pairs, test = STS-B
  dev, calibration and distillation corpus = the other 4,678 train pairs).
- `sst2`: the SST-2 teacher (recipe minilm-sst2: all-MiniLM-L6-v2 fine-tuned on SST-2 train) with
  a split written here from ../shared/data/sst2 (read-only, beside the project): validation = 500
  SST-2 train sentences drawn with numpy default_rng(0), test = SST-2 dev (872 sentences, never
  used to choose anything), calibration and distillation corpus = the other train sentences, less
  those sharing a normalised text with dev or with the 500 (searcher/problem/corpus.py
  split_disjoint). The teacher was fine-tuned on part of SST-2 train, so it may have seen some
  validation sentences: validation only ranks recipes, test is what is reported.
  Written to runs/sst2-finish/ (not committed: it is derived from shared/ by this code).
"""

from __future__ import annotations

import csv
import importlib
import pkgutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "sst2"
STUDIES = {"stsb": "studies/quickstart.yaml", "sst2": "runs/sst2-finish/study.yaml"}
TEST_NAMES = {"stsb": "STS-B dev (1,500 pairs)", "sst2": "SST-2 dev (872 sentences)"}
FAMILIES = {"stsb": "sentence-similarity", "sst2": "text-classification"}  # task types: finish's recipe keys
METRICS = {"stsb": "Spearman x100", "sst2": "accuracy (%)"}

SST2_STUDY = """# written by benchmarks/_finishing.py (see its docstring)
model: recipe:minilm-sst2
task: {{type: text-classification, max_length: 64}}
data:
  format: tsv
  columns: {{text: content}}
  validation: val-500.tsv
  test: {dev}
  calibration: train-rest.tsv
  calibration_size: 256
device: {{runtime: auto, threads: 2, batch_size: 1, seq_len: 64}}
budget: {{speedup: 2.0}}
"""


def import_all() -> None:
    """Load the whole package up front: a long run is not disturbed by edits to the tree."""
    import slimformer.methods
    import slimformer.searcher

    for pkg in (slimformer.methods, slimformer.searcher):
        for mod in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            try:
                importlib.import_module(mod.name)
            except ImportError:
                pass  # an optional runtime that is not installed


def _read(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]


def _write(path: Path, rows: list[list[str]]) -> None:
    path.write_text("".join(f"{label}\t{text}\n" for label, text in [("label", "content"), *rows]), encoding="utf-8")


def write_sst2_study() -> Path:
    from slimformer.searcher.problem.corpus import split_disjoint

    out = ROOT / "runs" / "sst2-finish"
    study = out / "study.yaml"
    if study.is_file():
        return study
    out.mkdir(parents=True, exist_ok=True)
    train, dev = _read(SST2 / "train.tsv"), _read(SST2 / "dev.tsv")
    held, rest, left = split_disjoint([(r[1],) for r in train], 500, 0, exclude=[(r[1],) for r in dev])
    _write(out / "val-500.tsv", [train[i] for i in held])
    _write(out / "train-rest.tsv", [train[i] for i in rest])
    study.write_text(SST2_STUDY.format(dev=SST2 / "dev.tsv"))
    print(f"SST-2 split: validation {len(held)}, corpus {len(rest)}, left out {left} of {len(train)}", flush=True)
    return study


def study_path(task: str) -> Path:
    return write_sst2_study() if task == "sst2" else ROOT / STUDIES[task]
