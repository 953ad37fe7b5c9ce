"""Writes the text slices of studies/smollm2-decode.yaml from ../shared/data/text/ (data/README.md):
paragraphs as JSON lines {"text": ...}.

    python studies/data/make_text.py ../shared/data/text
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def paragraphs(lines: list[str]) -> list[str]:
    out, cur = [], []
    for line in lines:
        if line.strip():
            cur.append(line.strip())
        elif cur:
            out.append(" ".join(cur))
            cur = []
    if cur:
        out.append(" ".join(cur))
    return out


def keep(paras: list[str]) -> list[str]:
    """Prose only: no illustration markers or chapter headings."""
    return [p for p in paras if not p.startswith("[") and not p.upper().startswith("CHAPTER")]


def take(paras: list[str], chars: int) -> list[str]:
    out, n = [], 0
    for p in paras:
        if n >= chars:
            break
        out.append(p)
        n += len(p)
    return out


def write(name: str, rows: list[str]) -> None:
    with open(HERE / name, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({"text": r}, ensure_ascii=False) + "\n")


def main(src: str) -> None:
    src = Path(src)
    pride = (src / "pride-and-prejudice.txt").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(pride) if line.startswith("CHAPTER II."))
    middle = next(i for i, line in enumerate(pride) if line.startswith("CHAPTER XXX."))
    write("pride-calibration.jsonl", take(keep(paragraphs(pride[start:middle])), 40_000))  # chapters II-: calibration
    write("pride-validation.jsonl", take(keep(paragraphs(pride[middle:])), 8_000))  # chapter XXX-: the search selects on it
    wiki = (src / "wikitext-2-raw-test.txt").read_text(encoding="utf-8").splitlines()
    write("wikitext2-test.jsonl", take([line.strip() for line in wiki if line.strip()], 24_000))  # reported only


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(HERE.parents[2] / "shared" / "data" / "text"))
