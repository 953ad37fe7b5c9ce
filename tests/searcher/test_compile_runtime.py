"""device.runtime: compile: a study whose latencies are measured through torch.compile completes
and records the runtime. The model is a one-layer BERT (hidden 32) and the only trial is the
uncompressed plan, so the one graph compiled for the baseline serves the candidate too (the
first compile costs tens of seconds on 2 cores)."""

from __future__ import annotations

import shutil

import optuna
import yaml
from conftest import STUDIES, copy_tokenizer, run_in_process
from optuna.trial import TrialState


def test_search_with_torch_compile(tmp_path, tiny_model_dir):
    import torch
    import transformers as T

    torch.manual_seed(0)
    cfg = T.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, max_position_embeddings=64)
    model_dir = tmp_path / "one-layer"
    T.BertModel(cfg).save_pretrained(model_dir)
    copy_tokenizer(tiny_model_dir, model_dir)
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(STUDIES / "data" / "sts-dev.tsv", data / "sts-dev.tsv")
    study = {
        "model": str(model_dir), "task": "sentence-similarity",
        "data": {"format": "tsv", "header": False,
                 "names": ["genre", "file", "year", "id", "score", "sentence1", "sentence2"],
                 "validation": "data/sts-dev.tsv", "validation_size": 32},
        "device": {"runtime": "compile", "threads": 1, "seq_len": 16, "rounds": 3, "warmup": 1},
        "space": {"heads": {"choices": [1, 2]}, "depth": {"min": 1}},
        "search": {"trials": 1, "sampler": "random"},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    torch._dynamo.utils.counters.clear()
    res = run_in_process("search", path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # torch.compile ran here
    s = optuna.load_study(study_name="study", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert s.user_attrs["device"]["runtime"] == "compile"
    (t,) = s.get_trials()
    assert t.state == TrialState.COMPLETE and t.user_attrs["seeded"]
    assert t.user_attrs["latency_ms"] > 0 and t.user_attrs["speedup"] > 0
    rep = run_in_process("report", path, "--no-rescore")
    assert rep.returncode == 0 and "compile" in rep.stdout, rep.stdout + rep.stderr[-2000:]
