"""Task data from local files (csv/tsv/json/jsonl/parquet) through `datasets`, with column mapping."""

from __future__ import annotations

import csv
from pathlib import Path

from .errors import UserError

__all__ = ["load_rows", "TASK_FIELDS"]

# the fields each task reads, and which are optional
TASK_FIELDS = {
    "sentence-similarity": ("sentence1", "sentence2", "score"),
    "text-classification": ("text", "label"),
    "causal-lm": ("text",),
    "image-classification": ("image", "label"),
}


def _format(path: Path, fmt: str | None) -> str:
    if fmt:
        return fmt
    ext = path.suffix.lower().lstrip(".")
    return {"txt": "tsv"}.get(ext, ext)


def _read_tsv(path: Path, header: bool, names: list[str] | None) -> dict[str, list]:
    """Tab-separated, unquoted (STS-B has bare double quotes); rows with extra trailing
    fields (STS-B train carries source notes there) are cut to the named columns."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = [r for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if r]
    if header:
        cols, rows = rows[0], rows[1:]
    else:
        cols = names or [str(i) for i in range(max(len(r) for r in rows))]
    short = next((i for i, r in enumerate(rows) if len(r) < len(cols)), None)
    if short is not None:
        raise UserError(f"{path}: row {short + 1 + header} has {len(rows[short])} fields, expected {len(cols)}")
    out = {c: [r[i] for r in rows] for i, c in enumerate(cols)}
    for c, values in out.items():  # numeric columns as numbers
        try:
            out[c] = [float(v) for v in values]
        except ValueError:
            pass
    return out


def load_rows(path: Path, task: str, *, fmt: str | None = None, header: bool = True,
              names: list[str] | None = None, columns: dict[str, str] | None = None,
              limit: int | None = None):
    """A `datasets.Dataset` with exactly the task's fields (renamed from the file's columns)."""
    import datasets

    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    fmt = _format(path, fmt)
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        if fmt == "tsv":
            ds = datasets.Dataset.from_dict(_read_tsv(path, header, names))
        elif fmt == "csv":
            kwargs = {} if header else {"header": None, "names": names or None}
            ds = datasets.load_dataset("csv", data_files=str(path), split="train", **kwargs)
        elif fmt in ("json", "jsonl"):
            ds = datasets.load_dataset("json", data_files=str(path), split="train")
        elif fmt == "parquet":
            ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
        else:
            raise UserError(f"data format {fmt!r} not supported; use csv, tsv, json, jsonl or parquet")
    except UserError:
        raise
    except Exception as exc:  # pandas/pyarrow parse errors
        raise UserError(f"cannot read {path} as {fmt}: {str(exc).splitlines()[0]}") from None
    fields = TASK_FIELDS[task]
    mapping = {f: (columns or {}).get(f, f) for f in fields}
    available = [str(c) for c in ds.column_names]
    for field_name, col in mapping.items():
        if col not in available:
            raise UserError(
                f"{path}: column {col!r} for task field {field_name!r} not found; columns are: {', '.join(available)}"
                f" (map it with data.columns.{field_name})"
            )
    ds = ds.select_columns(list(mapping.values()))
    ds = ds.rename_columns({c: f for f, c in mapping.items() if c != f})
    if limit is not None and limit < len(ds):
        ds = ds.shuffle(seed=0).select(range(limit))  # a fixed random subset, not the file's first rows
    if len(ds) == 0:
        raise UserError(f"{path}: no rows")
    return ds
