"""What the benchmark scripts share (run them as modules: `python -m benchmarks.NAME`).

- Where things are: ROOT (the repository), RESULTS (benchmarks/results/, every results file),
  STUDY (the quickstart, relative to a copy of the repository's folders).
- The results writer: `write_md` puts the title, then the CPU line (`cpu_line`: the CPU model and
  the ISA flags that decide which kernels pay), then the lines, then a "Conditions:" paragraph.
- The quickstart as a new user runs it (repeatability, trial_count, feasibility, scale_out): a fresh
  copy of studies/ and an empty cache (no device profile, no recipe), and the slimformer CLI in a
  subprocess there (`fresh_copy`, `run_env`, `slimformer`).
- The finishing benchmarks' (finish, finish_recipe) two studies and the package loaded up front:
  `stsb`: studies/quickstart.yaml as shipped (validation = 500 STS-B train pairs, test = STS-B
  dev, calibration and distillation corpus = the other 4,678 train pairs).
  `sst2`: the SST-2 teacher (recipe minilm-sst2: all-MiniLM-L6-v2 fine-tuned on SST-2 train) with
  a split written here from ../shared/data/sst2 (read-only, beside the project): validation = 500
  SST-2 train sentences drawn with numpy default_rng(0), test = SST-2 dev (872 sentences, never
  used to choose anything), calibration and distillation corpus = the other train sentences, less
  those sharing a normalised text with dev or with the 500 (searcher/problem/corpus.py
  split_disjoint). The teacher was fine-tuned on part of SST-2 train, so it may have seen some
  validation sentences: validation only ranks recipes, test is what is reported.
  Written to runs/sst2-finish/ (not committed: it is derived from shared/ by this code).
- The tests' tiny BERT and a study around it (reliability, scale_out): `build_tiny_model`,
  `write_study`, and scale_out's throwaway PostgreSQL server, live in slimformer.searcher.testing,
  which the tests import too (benchmarks import nothing from tests/).
- Scoring and stored studies: `spearman` (rank correlation of two lists), `load_sqlite_study`.
"""

from __future__ import annotations

import csv
import importlib
import os
import pkgutil
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
STUDY = "studies/quickstart.yaml"


def cpu_line() -> str:
    """The CPU this ran on and the ISA flags that decide which kernels pay (the results vary by CPU)."""
    from slimformer.searcher.devices.latency import device_facts

    facts = device_facts()
    return (f"CPU: **{facts['cpu']}**, {facts['cores']} cores; ISA flags: "
            f"{', '.join(facts['flags']) or 'none of avx2/avx512/vnni/bf16/amx'}")


def write_md(out: str, lines: list[str], note: str | None) -> None:
    """Writes `out`.md (the title line, the CPU line, the other lines, then a "Conditions:" paragraph when a
    note is given) and prints it."""
    lines = [*lines[:1], "", cpu_line(), *lines[1:]]
    if note:
        lines = [*lines, "", f"Conditions: {note}"]
    text = "\n".join(lines)
    Path(out + ".md").write_text(text + "\n")
    print(text)


def fresh_copy(folder: Path, speedup: float | None = None) -> dict:
    """Makes `folder` (emptied first) hold a copy of studies/ and an empty cache; `speedup` replaces
    the copy's budget.speedup. Returns the environment the CLI runs in there."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    shutil.copytree(ROOT / "studies", folder / "studies")
    if speedup:
        study = folder / STUDY
        text, n = re.subn(r"(?m)^(\s+speedup:\s*)[0-9.]+", rf"\g<1>{speedup:g}", study.read_text())
        if n != 1:
            raise SystemExit(f"{STUDY}: expected one budget.speedup line to replace, found {n}")
        study.write_text(text)
    (folder / "cache").mkdir()
    return run_env(folder)


def run_env(folder: Path) -> dict:
    """The environment of the CLI in a folder made by fresh_copy (its own cache)."""
    return {**os.environ, "SLIMFORMER_CACHE": str(folder / "cache"), "TOKENIZERS_PARALLELISM": "false"}


def slimformer(*args, cwd: Path, env: dict, log: Path) -> tuple[int, str]:
    """`slimformer ARGS` in `cwd`: (exit code, stdout); stderr (the progress) is appended to `log`."""
    cmd = [sys.executable, "-m", "slimformer.searcher.cli", *map(str, args)]
    with open(log, "a") as err:
        res = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    return res.returncode, res.stdout


SST2 = ROOT.parent / "shared" / "data" / "sst2"
STUDIES = {"stsb": "studies/quickstart.yaml", "sst2": "runs/sst2-finish/study.yaml"}
TEST_NAMES = {"stsb": "STS-B dev (1,500 pairs)", "sst2": "SST-2 dev (872 sentences)"}
FAMILIES = {"stsb": "sentence-similarity", "sst2": "text-classification"}  # task types: finish's recipe keys
METRICS = {"stsb": "Spearman x100", "sst2": "accuracy (%)"}

SST2_STUDY = """# written by benchmarks/common.py (see its docstring)
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


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation of two paired lists; None under 3 pairs."""
    from scipy.stats import spearmanr

    return None if len(a) < 3 else float(spearmanr(a, b).statistic)


def load_sqlite_study(db: Path, name: str):
    """The Optuna study `name` stored in the SQLite file `db`."""
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
