"""The text-classification task end to end on a tiny classifier built here (the tiny BERT with a
random 2-class head), with a jsonl validation file and a csv calibration file whose columns differ
(`data.calibration_columns`); and transfer refusing a study of another model, task or data."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import STUDIES, assert_user_error, copy_tokenizer, run_in_process
from optuna.trial import TrialState

N_VALIDATION, N_CALIBRATION, TRIALS = 64, 32, 3


def _sts_rows(name: str, n: int) -> list[tuple[str, int]]:
    """(first sentence, 1 if the pair's similarity is at least 2.5) of the first n STS-B rows."""
    lines = (STUDIES / "data" / name).read_text(encoding="utf-8").splitlines()[:n]
    return [(f[5], int(float(f[4]) >= 2.5)) for f in (ln.split("\t") for ln in lines)]


def _classifier(tiny_model_dir: Path, out: Path) -> Path:
    import torch
    import transformers as T

    torch.manual_seed(0)
    T.BertForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2).save_pretrained(out)
    copy_tokenizer(tiny_model_dir, out)
    return out


def _study(folder: Path, model: Path, validation: str = "dev.jsonl", **extra) -> Path:
    study = {
        "model": str(model), "task": "text-classification",
        "data": {"validation": validation, "calibration": "train.csv", "calibration_size": N_CALIBRATION,
                 "calibration_columns": {"text": "sentence", "label": "target"}},
        "device": {"threads": 1, "seq_len": 32, "rounds": 4, "warmup": 1},
        "space": {"heads": {"choices": [1, 2, 4]}, "ffn": {"choices": [64, 256]}, "depth": {"min": 2},
                  "importance": ["fisher"]},  # Fisher importance reads the calibration labels
        "search": {"trials": TRIALS, "seed": 0, "sampler": "random"},
        **extra,
    }
    path = folder / f"{extra and 'b' or 'study'}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def searched(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("classification")
    model = _classifier(tiny_model_dir, folder / "classifier")
    rows = _sts_rows("sts-dev.tsv", N_VALIDATION)
    (folder / "dev.jsonl").write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    with open(folder / "train.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("sentence", "target"), *_sts_rows("sts-train-1k.tsv", N_CALIBRATION)])
    path = _study(folder, model)
    res = run_in_process("search", path)
    assert res.returncode == 0, res.stderr[-3000:]
    return path, model, rows


def test_search_scores_accuracy_of_the_classifier(searched):
    import torch
    import transformers as T

    path, model_dir, rows = searched
    study = optuna.load_study(study_name="study", storage=f"sqlite:///{path.parent / 'study.db'}")
    assert study.user_attrs["task"] == "text-classification" and study.user_attrs["metric"] == "accuracy"
    model = T.AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tok = T.AutoTokenizer.from_pretrained(model_dir)
    with torch.no_grad():
        enc = tok([t for t, _ in rows], truncation=True, max_length=128, padding=True, return_tensors="pt")
        predicted = model(**enc).logits.argmax(-1)
    accuracy = (predicted == torch.tensor([y for _, y in rows])).float().mean().item() * 100
    assert study.user_attrs["baseline"]["quality"] == pytest.approx(accuracy)
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(done) == TRIALS
    for t in done:
        assert t.user_attrs["plan"]["importance"] == "fisher"
        correct = t.user_attrs["quality"] * N_VALIDATION / 100  # accuracy on 64 rows: a whole number right
        assert correct == pytest.approx(round(correct)) and 0 <= correct <= N_VALIDATION


def test_calibration_columns_map_the_calibration_file(searched):
    from slimformer.searcher.config import load_study_config
    from slimformer.searcher.problem.workbench import Workbench

    path, _, _ = searched
    bench = Workbench(load_study_config(path), log=lambda msg: None)
    labels = [int(v) for b in bench.calibration.batches for v in b["labels"]]
    assert Counter(labels) == Counter(y for _, y in _sts_rows("sts-train-1k.tsv", N_CALIBRATION))


def _refused(path: Path, what: str):
    res = run_in_process("search", path, "--transfer-from", path.parent / "study.db")
    assert_user_error(res, "cannot transfer", what)
    assert not (path.parent / "b.db").exists()  # nothing written


def test_transfer_refuses_another_model(searched):
    path, model, _ = searched
    other = path.parent / "classifier-copy"  # the same weights under another name: another model to the study
    shutil.copytree(model, other, dirs_exist_ok=True)
    _refused(_study(path.parent, other, transfer={}), "its model differs")


def test_transfer_refuses_another_task(searched):
    path, model, _ = searched
    b = _study(path.parent, model, transfer={})
    study = yaml.safe_load(b.read_text())
    study["task"] = "sentence-similarity"
    study["data"] = {"format": "tsv", "header": False, "validation": str(STUDIES / "data" / "sts-dev.tsv"),
                     "names": ["genre", "file", "year", "id", "score", "sentence1", "sentence2"],
                     "validation_size": 32}
    study["space"].pop("importance")
    b.write_text(yaml.safe_dump(study))
    _refused(b, "its task differs")


def test_transfer_refuses_other_validation_data(searched):
    path, model, rows = searched
    flipped = [(t, 1 - y) if i == 0 else (t, y) for i, (t, y) in enumerate(rows)]  # one label changed
    (path.parent / "dev2.jsonl").write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in flipped))
    _refused(_study(path.parent, model, validation="dev2.jsonl", transfer={}), "validation data")
