"""Writes the STS-B split of the shipped MiniLM studies from sts-train.tsv (STS-B train, 5,749
pairs) and sts-dev.tsv (the test split):

- sts-val-500.tsv: 500 train pairs drawn with numpy's default_rng(0): the validation split;
- sts-train-rest.tsv: the other train pairs: calibration and distillation corpus;

so that no sentence (normalised: NFKC, case-folded, whitespace collapsed) is in two of the
three splits; train rows sharing a sentence with dev or with the drawn 500, and repeated
pairs, are left out. Rows are copied unmodified, in file order.

    python studies/data/make_split.py      # from the project root; rewrites the two files
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from slimformer.searcher.problem.corpus import split_disjoint

HERE = Path(__file__).resolve().parent
SEED, SIZE = 0, 500


def read(path: Path) -> list[str]:
    return [ln + "\n" for ln in path.read_text(encoding="utf-8").split("\n") if ln.strip()]


def pairs(lines: list[str]) -> list[tuple[str, str]]:
    rows = list(csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [(r[5], r[6]) for r in rows]


def make() -> dict[str, list[str]]:
    train, dev = read(HERE / "sts-train.tsv"), read(HERE / "sts-dev.tsv")
    held, rest, left = split_disjoint(pairs(train), SIZE, SEED, exclude=pairs(dev))
    print(f"validation {len(held)}, calibration/distillation {len(rest)}, left out {left} of {len(train)}",
          file=sys.stderr)
    return {"sts-val-500.tsv": [train[i] for i in held], "sts-train-rest.tsv": [train[i] for i in rest]}


if __name__ == "__main__":
    for name, lines in make().items():
        (HERE / name).write_text("".join(lines), encoding="utf-8")
