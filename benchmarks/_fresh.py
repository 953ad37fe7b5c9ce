"""The quickstart as a new user runs it: a fresh copy of studies/ and an empty cache (no device
profile, no recipe), and the slimformer CLI in a subprocess there (shared by repeatability.py and
trial_count.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDY = "studies/quickstart.yaml"


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
