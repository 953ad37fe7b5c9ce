"""Cut the SST-2 files of the shipped SST-2 studies and recipes from the full GLUE SST-2 files (run
once from the project root: `python studies/data/make_sst2.py ../shared/data/sst2`). The dev split
is copied whole; the train slice keeps the header line and a fixed random subset of the rows
(random.Random(0)), in the source's order. Source and licence: studies/data/README.md."""

from __future__ import annotations

import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SLICES = {"sst2-train-5k.tsv": ("train.tsv", 5000), "sst2-dev.tsv": ("dev.tsv", None)}  # None: every row


def main(src: str) -> None:
    for name, (source, n) in SLICES.items():
        header, *rows = (Path(src) / source).read_text(encoding="utf-8").splitlines(keepends=True)
        keep = range(len(rows)) if n is None else sorted(random.Random(0).sample(range(len(rows)), n))
        (HERE / name).write_text(header + "".join(rows[i] for i in keep), encoding="utf-8")
        print(f"{name}: {len(keep)} of {len(rows)} rows of {source}")


if __name__ == "__main__":
    main(sys.argv[1])
