"""The distillation corpus of `slimformer finish` (data.distill), and the rule that keeps it
apart from the splits quality is read on.

- Format from the corpus file's own extension: the study's tabular formats (csv/tsv read with
  the study's data.header and data.names, json, jsonl, parquet), or `.txt` = one text a line.
  Columns are mapped with data.distill_columns (default: data.calibration_columns, else
  data.columns). Labels are optional: the embedding and logits losses need none.
- Default: the calibration file in full (not the data.calibration_size subset).
- Sentence pairs become single texts (each sentence once): the embedding loss compares one
  sentence's pooled embedding with the teacher's, so a pair is two independent examples.
- A corpus row that shares a text (compared after `normalise`) with a row of the validation
  or test split is refused, with the count: training on a sentence quality is read on flatters
  that quality, even without its label.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence

from ..config import TASK_FIELDS, StudyConfig
from ..errors import UserError
from .data import LABEL_FIELDS, read_table

__all__ = ["CorpusRows", "load_corpus_rows", "normalise", "shared_rows", "check_no_overlap", "split_disjoint",
           "CORPUS_TASKS", "build_corpus"]

CORPUS_TASKS = ("sentence-similarity", "text-classification", "causal-lm")  # tasks whose inputs are texts


def normalise(text) -> str:
    """Texts compared for overlap: Unicode NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", str(text)).casefold().split())


class CorpusRows:
    """The corpus as rows of input texts (one text, or a sentence pair), optional labels."""

    def __init__(self, rows: list[tuple[str, ...]], labels: list | None, source: str):
        if not rows:
            raise UserError(f"{source}: the distillation corpus has no rows")
        self.rows, self.labels, self.source = rows, labels, source

    def __len__(self) -> int:
        return len(self.rows)

    def texts(self) -> tuple[list[str], list | None]:
        """Training examples: each distinct text once (pairs split into their sentences); labels kept
        only for single-text rows (a pair's score belongs to the pair, not to a sentence)."""
        if self.labels is not None and all(len(r) == 1 for r in self.rows):
            return [r[0] for r in self.rows], list(self.labels)
        seen, out = set(), []
        for row in self.rows:
            for text in row:
                if text not in seen:
                    seen.add(text)
                    out.append(text)
        return out, None


def _input_fields(task: str) -> tuple[str, ...]:
    return tuple(f for f in TASK_FIELDS[task] if f not in LABEL_FIELDS)


def _label_field(task: str) -> str | None:
    return next((f for f in TASK_FIELDS[task] if f in LABEL_FIELDS and task != "sentence-similarity"), None)


def load_corpus_rows(cfg: StudyConfig) -> CorpusRows:
    """Read data.distill (or the calibration file in full); UserError with one line on bad input."""
    task, d = cfg.task.type, cfg.data
    if task not in CORPUS_TASKS:
        raise UserError(f"data.distill: a distillation corpus is for text tasks ({', '.join(CORPUS_TASKS)}), "
                        f"not {task}")
    if d.distill is not None:
        path, columns = cfg.resolve_path(d.distill), d.distill_columns
        if columns is None:
            columns = d.calibration_columns if d.calibration_columns is not None else d.columns
        what = "data.distill"
    elif d.calibration is not None:
        path = cfg.resolve_path(d.calibration)
        columns = d.calibration_columns if d.calibration_columns is not None else d.columns
        what = "data.calibration (the default distillation corpus)"
    else:
        raise UserError("finish needs a distillation corpus: set data.distill (or data.calibration)")
    if not path.is_file():
        raise UserError(f"{what}: file not found: {path}")
    if path.suffix.lower() == ".txt":
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise UserError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
        return CorpusRows([(ln,) for ln in lines if ln.strip()], None, str(path))
    table = read_table(path, None, d.header, d.names)
    available = [str(c) for c in table.column_names]
    fields = _input_fields(task)
    mapping = {f: (columns or {}).get(f, f) for f in fields}
    missing = [f for f, c in mapping.items() if c not in available]
    if missing:
        f = missing[0]
        raise UserError(f"{path}: column {mapping[f]!r} for task field {f!r} not found; columns are: "
                        f"{', '.join(available)} (map it with data.distill_columns.{f})")
    cols = [table[mapping[f]] for f in fields]
    rows = [tuple(str(v) for v in values) for values in zip(*cols)]
    keep = [i for i, r in enumerate(rows) if all(t.strip() for t in r)]
    label = _label_field(task)
    label_col = (columns or {}).get(label, label) if label else None
    labels = None
    if label_col in available:
        raw = table[label_col]
        labels = [raw[i] for i in keep]
        if any(v is None for v in labels):
            labels = None
    return CorpusRows([rows[i] for i in keep], labels, str(path))


def shared_rows(corpus: Iterable[Sequence[str]], held_out: Iterable[Sequence[str]]) -> int:
    """How many corpus rows have a text (normalised) that also occurs in a held-out row."""
    seen = {normalise(t) for row in held_out for t in row}
    return sum(any(normalise(t) in seen for t in row) for row in corpus)


def _split_texts(rows) -> list[tuple[str, ...]]:
    fields = [f for f in rows.column_names if f not in LABEL_FIELDS]
    return [tuple(str(v) for v in values) for values in zip(*(rows[f] for f in fields))]


def check_no_overlap(corpus: CorpusRows, splits: dict[str, object]) -> None:
    """Refuse a corpus sharing text with a held-out split (`splits`: name -> `datasets.Dataset`)."""
    for name, rows in splits.items():
        if rows is None:
            continue
        n = shared_rows(corpus.rows, _split_texts(rows))
        if n:
            raise UserError(f"the distillation corpus {corpus.source} shares {n} of its {len(corpus)} rows with the "
                            f"{name} split (compared on normalised text); remove them or use another data.distill")


def split_disjoint(rows: list[tuple[str, ...]], size: int, seed: int,
                   exclude: Iterable[Sequence[str]] = ()) -> tuple[list[int], list[int], int]:
    """Split row indices into a held-out part of `size` rows and the rest, so that no text
    (normalised) is in both, and none of either part's texts is in `exclude`.

    Rows with a text in `exclude` and duplicate rows are left out; the held-out rows are a
    random sample (numpy's default_rng(seed)); rest rows sharing a text with them are left out.
    Returns (held-out indices, rest indices, rows left out); indices in file order."""
    import numpy as np

    banned = {normalise(t) for row in exclude for t in row}
    seen_rows, clean = set(), []
    for i, row in enumerate(rows):
        key = tuple(sorted(normalise(t) for t in row))
        if key in seen_rows or any(t in banned for t in key):
            continue
        seen_rows.add(key)
        clean.append(i)
    if size > len(clean):
        raise ValueError(f"asked for {size} held-out rows, only {len(clean)} usable")
    held = sorted(np.random.default_rng(seed).choice(clean, size=size, replace=False).tolist())
    held_texts = {normalise(t) for i in held for t in rows[i]}
    held_set = set(held)
    rest = [i for i in clean if i not in held_set and not any(normalise(t) in held_texts for t in rows[i])]
    return held, rest, len(rows) - len(held) - len(rest)


def build_corpus(rows: CorpusRows, task, batch_size: int, seed: int = 0):
    """The DistillCorpus (methods/corpus.py) of these rows for `task` (a searcher.problem.tasks.Task)."""
    from slimformer.methods.corpus import DistillCorpus

    texts, labels = rows.texts()
    enc = task.tokenizer(list(texts), truncation=True, max_length=task.max_length)
    lengths = [len(ids) for ids in enc["input_ids"]]
    return DistillCorpus(texts, task.corpus_batch, lengths, batch_size=batch_size, labels=labels,
                         features=task.corpus_features(), seed=seed)
