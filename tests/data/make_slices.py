"""Cut the SST-2 slices in this folder from the full GLUE SST-2 files (run once from the project
root: `python tests/data/make_slices.py ../shared/data/sst2`). Each slice keeps its source's header
line and a fixed random subset of its rows (random.Random(0)), in the source's order."""

from __future__ import annotations

import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SLICES = {"sst2-train-1k.tsv": ("train.tsv", 1000), "sst2-dev-256.tsv": ("dev.tsv", 256)}


def main(src: str) -> None:
    for name, (source, n) in SLICES.items():
        header, *rows = (Path(src) / source).read_text(encoding="utf-8").splitlines(keepends=True)
        keep = sorted(random.Random(0).sample(range(len(rows)), n))
        (HERE / name).write_text(header + "".join(rows[i] for i in keep), encoding="utf-8")
        print(f"{name}: {n} of {len(rows)} rows of {source}")


if __name__ == "__main__":
    main(sys.argv[1])
