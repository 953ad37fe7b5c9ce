"""data.format: csv, json, jsonl and parquet files holding the STS-B rows of the committed tsv
load the same rows (task fields, values and order) as the tsv."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from slimformer.searcher.problem.data import load_rows

STUDIES = Path(__file__).resolve().parents[2] / "studies"
NAMES = ["genre", "file", "year", "id", "score", "sentence1", "sentence2"]
N, QUOTED = 40, 10  # the dev file's first rows and its first rows holding bare double quotes


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(the tsv slice, its raw rows as dicts, the rows load_rows gives for it)."""
    folder = tmp_path_factory.mktemp("formats")
    every = (STUDIES / "data" / "sts-dev.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    lines = every[:N] + [ln for ln in every[N:] if '"' in ln][:QUOTED]
    tsv = folder / "dev.tsv"
    tsv.write_text("".join(lines), encoding="utf-8")
    raw = [dict(zip(NAMES, ln.rstrip("\n").split("\t"))) for ln in lines]
    for r in raw:
        r["score"] = float(r["score"])
    rows = load_rows(tsv, "sentence-similarity", header=False, names=NAMES).to_list()
    assert len(rows) == N + QUOTED and any('"' in r["sentence1"] + r["sentence2"] for r in rows)
    return folder, raw, rows


def _write(folder: Path, fmt: str, raw: list[dict], header: bool = True) -> Path:
    path = folder / f"dev-{fmt}{'' if header else '-noheader'}.{fmt}"
    if fmt == "csv":
        with open(path, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            if header:
                w.writerow(NAMES)
            w.writerows([r[c] for c in NAMES] for r in raw)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in raw), encoding="utf-8")
    elif fmt == "json":
        path.write_text(json.dumps(raw), encoding="utf-8")
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(raw), path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl", "parquet"])
def test_format_loads_the_same_rows_as_the_tsv(reference, fmt):
    folder, raw, rows = reference
    got = load_rows(_write(folder, fmt, raw), "sentence-similarity", fmt=fmt).to_list()
    assert got == rows


def test_csv_without_header_takes_the_names(reference):
    folder, raw, rows = reference
    path = _write(folder, "csv", raw, header=False)
    got = load_rows(path, "sentence-similarity", header=False, names=NAMES).to_list()
    assert got == rows


def test_format_from_the_extension_and_columns_mapping(reference):
    """No data.format: the extension says it; data.columns maps other column names to the task's."""
    folder, raw, rows = reference
    renamed = [{"left": r["sentence1"], "right": r["sentence2"], "gold": r["score"]} for r in raw]
    path = _write(folder, "jsonl", renamed)
    got = load_rows(path, "sentence-similarity",
                    columns={"sentence1": "left", "sentence2": "right", "score": "gold"}).to_list()
    assert got == rows
