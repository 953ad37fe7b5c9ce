"""The distillation corpus (data.distill) of `slimformer finish`: every format it reads, column
mapping, the default (the calibration file in full), and the refusal of a corpus that shares
text with the validation or test split."""

from __future__ import annotations

import json

import pytest
from slimformer.searcher.config import load_study_config
from slimformer.searcher.errors import UserError
from slimformer.searcher.problem.corpus import (
    check_no_overlap,
    load_corpus_rows,
    normalise,
    shared_rows,
    split_disjoint,
)
from slimformer.searcher.problem.data import load_rows

PAIRS = [("A man plays a guitar.", "A man is playing guitar.", 4.2), ("Dogs run.", "A cat sleeps.", 0.4),
         ("The sky is blue.", "Blue is the sky.", 4.8)]


def _cfg(tmp_path, task="sentence-similarity", **data):
    return load_study_config(data={"task": task, "data": {k: str(tmp_path / v) if k in ("distill", "calibration")
                                                          else v for k, v in data.items()}})


def _write(tmp_path, fmt: str):
    import datasets

    cols = {"sentence1": [p[0] for p in PAIRS], "sentence2": [p[1] for p in PAIRS], "score": [p[2] for p in PAIRS]}
    path = tmp_path / f"corpus.{fmt}"
    if fmt == "tsv":
        path.write_text("sentence1\tsentence2\tscore\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in PAIRS))
    elif fmt == "csv":
        datasets.Dataset.from_dict(cols).to_csv(str(path), index=False)
    elif fmt == "json":
        path.write_text(json.dumps([dict(zip(cols, r)) for r in zip(*cols.values())]))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(dict(zip(cols, r))) + "\n" for r in zip(*cols.values())))
    elif fmt == "parquet":
        datasets.Dataset.from_dict(cols).to_parquet(str(path))
    return path


@pytest.mark.parametrize("fmt", ["tsv", "csv", "json", "jsonl", "parquet"])
def test_tabular_corpus_in_each_format(tmp_path, fmt):
    path = _write(tmp_path, fmt)
    rows = load_corpus_rows(_cfg(tmp_path, distill=path.name))
    assert rows.rows == [(a, b) for a, b, _ in PAIRS]
    texts, labels = rows.texts()
    assert labels is None  # a pair's score is not a sentence's label
    assert texts == [t for a, b, _ in PAIRS for t in (a, b)]


def test_txt_corpus_is_one_text_a_line(tmp_path):
    (tmp_path / "c.txt").write_text("first text\n\n  \nsecond text\nfirst text\n")
    rows = load_corpus_rows(_cfg(tmp_path, distill="c.txt"))
    assert rows.rows == [("first text",), ("second text",), ("first text",)]
    assert rows.texts() == (["first text", "second text"], None)  # each distinct text once


def test_distill_columns_map_other_names_and_keep_labels(tmp_path):
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"sentence": t, "y": y}) + "\n"
                                              for t, y in [("good film", 1), ("bad film", 0)]))
    cfg = _cfg(tmp_path, "text-classification", distill="c.jsonl", distill_columns={"text": "sentence", "label": "y"})
    assert load_corpus_rows(cfg).texts() == (["good film", "bad film"], [1, 0])
    with pytest.raises(UserError, match="column 'text' for task field 'text' not found.*distill_columns"):
        load_corpus_rows(_cfg(tmp_path, "text-classification", distill="c.jsonl"))


def test_default_corpus_is_the_calibration_file_in_full(tmp_path):
    _write(tmp_path, "tsv")
    cfg = _cfg(tmp_path, calibration="corpus.tsv", calibration_size=1)
    assert len(load_corpus_rows(cfg)) == len(PAIRS)


def test_missing_corpus_and_image_task_are_refused(tmp_path):
    with pytest.raises(UserError, match="data.distill: file not found"):
        load_corpus_rows(_cfg(tmp_path, distill="nope.txt"))
    with pytest.raises(UserError, match="for text tasks"):
        load_corpus_rows(_cfg(tmp_path, "image-classification", distill="c.txt"))


def test_overlap_with_a_held_out_split_is_refused_with_the_count(tmp_path):
    (tmp_path / "c.txt").write_text("A  man plays a GUITAR.\nsomething new\nDogs run.\n")
    rows = load_corpus_rows(_cfg(tmp_path, distill="c.txt"))
    path = _write(tmp_path, "tsv")
    test = load_rows(path, "sentence-similarity")
    assert normalise(" A  man plays a GUITAR. ") == normalise("a man plays a guitar.")
    assert shared_rows(rows.rows, [("a man plays a guitar.", "x")]) == 1
    with pytest.raises(UserError, match="shares 2 of its 3 rows with the test split"):
        check_no_overlap(rows, {"validation": None, "test": test})
    check_no_overlap(rows, {"validation": load_rows(path, "sentence-similarity").select([])})


def test_split_disjoint_keeps_no_text_in_both_parts():
    rows = [("a", "b"), ("b", "c"), ("d", "e"), ("f", "g"), ("a", "b"), ("h", "i"), ("j", "x")]
    held, rest, left = split_disjoint(rows, 2, seed=1, exclude=[("x",)])
    assert len(held) == 2 and not set(held) & set(rest)
    assert 6 not in held + rest and 4 not in held + rest  # the excluded text, the duplicate pair
    assert shared_rows([rows[i] for i in rest], [rows[i] for i in held]) == 0
    assert left == len(rows) - len(held) - len(rest)
    assert split_disjoint(rows, 2, seed=1, exclude=[("x",)]) == (held, rest, left)
