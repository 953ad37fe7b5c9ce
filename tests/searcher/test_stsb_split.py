"""The STS-B split of the shipped MiniLM studies: validation (500 train pairs), calibration and
distillation (the other train pairs), test (STS-B dev) share no sentence, are what
studies/data/make_split.py writes, and are what the studies point at."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from slimformer.searcher.config import load_study_config
from slimformer.searcher.problem.corpus import check_no_overlap, load_corpus_rows, shared_rows
from slimformer.searcher.problem.data import load_rows

DATA = Path(__file__).resolve().parents[2] / "studies" / "data"


def _make_split():
    spec = importlib.util.spec_from_file_location("make_split", DATA / "make_split.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_committed_split_files_are_what_the_script_writes():
    mod = _make_split()
    for name, lines in mod.make().items():
        assert (DATA / name).read_text(encoding="utf-8") == "".join(lines), name
    assert len(mod.read(DATA / "sts-train.tsv")) == 5749


def test_validation_calibration_and_test_share_no_sentence():
    mod = _make_split()
    val, rest, dev = (mod.pairs(mod.read(DATA / n)) for n in ("sts-val-500.tsv", "sts-train-rest.tsv", "sts-dev.tsv"))
    assert (len(val), len(rest), len(dev)) == (500, 4678, 1500)
    assert shared_rows(rest, val) == shared_rows(rest, dev) == shared_rows(val, dev) == 0
    train = set(mod.pairs(mod.read(DATA / "sts-train.tsv")))
    assert set(val) <= train and set(rest) <= train


@pytest.mark.parametrize("name", ["quickstart.yaml", "minilm-2x.yaml"])
def test_minilm_studies_select_on_train_pairs_and_report_on_dev(name):
    cfg = load_study_config(DATA.parent / name)
    d = cfg.data
    assert (d.validation, d.test, d.calibration) == ("data/sts-val-500.tsv", "data/sts-dev.tsv",
                                                     "data/sts-train-rest.tsv")
    corpus = load_corpus_rows(cfg)  # default: the calibration file in full
    assert len(corpus) == 4678
    splits = {s: load_rows(cfg.resolve_path(getattr(d, s)), cfg.task.type, header=d.header, names=d.names)
              for s in ("validation", "test")}
    check_no_overlap(corpus, splits)  # finish accepts it
