"""Task data from local files (csv/tsv/json/jsonl/parquet, npz for images) through `datasets`,
with column mapping, or from a built-in source that needs no download:

- `sklearn:digits:train` / `sklearn:digits:validation` / `sklearn:digits`: scikit-learn's
  8x8 handwritten digits (1,797 images, values 0-16; they ship inside scikit-learn), with a
  fixed stratified 80/20 split (random_state 0: 1,437 train, 360 validation);
- `.npz` files: arrays named like the task fields (`image`: N x H x W [x C], `label`: N),
  or mapped with `data.columns`.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ..config import TASK_FIELDS
from ..errors import UserError

__all__ = ["load_rows", "read_table", "LABEL_FIELDS", "is_builtin_source", "BUILTIN_SOURCES"]

# the fields each task reads, and which are optional


LABEL_FIELDS = ("score", "label")  # the task fields that are targets, not model inputs

BUILTIN_SOURCES = ("sklearn:digits", "sklearn:digits:train", "sklearn:digits:validation")


def is_builtin_source(value) -> bool:
    return isinstance(value, str) and value.startswith("sklearn:")


def _builtin(name: str) -> dict[str, list]:
    if name not in BUILTIN_SOURCES:
        raise UserError(f"unknown data source {name!r}; built-in sources: {', '.join(BUILTIN_SOURCES)}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images, labels = digits.images.astype("float32"), digits.target.astype("int64")
    split = name.split(":")[2] if name.count(":") == 2 else None
    if split is not None:
        tr, va = train_test_split(range(len(labels)), test_size=0.2, stratify=labels, random_state=0)
        idx = tr if split == "train" else va
        images, labels = images[idx], labels[idx]
    return {"image": list(images), "label": labels.tolist()}


def _read_npz(path: Path) -> dict[str, list]:
    import numpy as np

    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    sizes = {len(a) for a in arrays.values() if a.ndim >= 1}
    if len(sizes) != 1 or any(a.ndim == 0 for a in arrays.values()):
        raise UserError(f"{path}: the arrays must all have the same first dimension (one entry per row)")
    return {k: list(a) if a.ndim > 1 else a.tolist() for k, a in arrays.items()}


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

    if is_builtin_source(path):
        source = str(path)
        ds = datasets.Dataset.from_dict(_builtin(source))
        return _select(ds, source, task, columns, limit)
    return _select(read_table(path, fmt, header, names), Path(path), task, columns, limit)


def read_table(path: Path, fmt: str | None = None, header: bool = True, names: list[str] | None = None):
    """A data file's rows as a `datasets.Dataset` with the file's own columns."""
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
        elif fmt == "npz":
            ds = datasets.Dataset.from_dict(_read_npz(path))
        else:
            raise UserError(f"data format {fmt!r} not supported; use csv, tsv, json, jsonl, parquet or npz")
    except UserError:
        raise
    except Exception as exc:  # pandas/pyarrow parse errors
        raise UserError(f"cannot read {path} as {fmt}: {str(exc).splitlines()[0]}") from None
    return ds


def _select(ds, path, task: str, columns: dict[str, str] | None, limit: int | None):
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
