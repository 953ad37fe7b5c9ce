"""Distillation on a corpus: a fresh shuffled order every epoch (batched by similar length),
teacher targets cached per example (in memory or on disk: the same training either way), the
step count cut to fit a deadline, and the calibration batches shuffled every epoch too."""

from __future__ import annotations

import time

import pytest
import torch
import transformers as T
from slimformer.methods import Plan, apply_plan
from slimformer.methods.calibration import Calibration
from slimformer.methods.corpus import DistillCorpus
from slimformer.methods.distill import mean_pool


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: these models are tiny, and two threads on a busy machine only wait."""
    from slimformer.searcher.devices.latency import fixed_threads

    with fixed_threads(1):
        yield


def _model():
    torch.manual_seed(0)
    cfg = T.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=32, max_position_embeddings=64)
    return T.BertModel(cfg).eval()


def _batch(texts, labels=None):
    ids = [[1 + (hash(w) % 48) for w in t.split()] for t in texts]
    n = max(map(len, ids))
    return {"input_ids": torch.tensor([x + [0] * (n - len(x)) for x in ids]),
            "attention_mask": torch.tensor([[1] * len(x) + [0] * (n - len(x)) for x in ids])}


def _corpus(n=40, batch_size=4, seed=0, **kw):
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(1, 20, (n,), generator=g).tolist()
    texts = [" ".join(f"w{i}_{j}" for j in range(k)) for i, k in enumerate(lengths)]
    return DistillCorpus(texts, _batch, lengths, batch_size=batch_size, seed=seed,
                         features=lambda out, inp: mean_pool(out.last_hidden_state, inp["attention_mask"]), **kw)


def test_every_epoch_is_a_fresh_shuffle_of_all_examples_batched_by_length():
    c = _corpus(n=400, batch_size=4)
    e0, e1 = c.epoch_batches(0), c.epoch_batches(1)
    for epoch in (e0, e1):
        assert sorted(i for b in epoch for i in b) == list(range(400))
    assert e0 != e1 and [sorted(b) for b in e0] != [sorted(b) for b in e1]
    assert e0 == _corpus(n=400, batch_size=4).epoch_batches(0)  # seeded
    assert e0 != _corpus(n=400, batch_size=4, seed=1).epoch_batches(0)
    # batch mates have similar lengths: far less spread than random batches of the same size
    spread = sum(max(c.lengths[i] for i in b) - min(c.lengths[i] for i in b) for b in e0) / len(e0)
    assert spread < 2.0
    # and the batch order is not sorted by length
    firsts = [c.lengths[b[0]] for b in e0]
    assert firsts != sorted(firsts)


def _distill(model, corpus, steps, **kw):
    plan = Plan(heads=1, ffn=16, distill={"steps": steps, "losses": ["embedding"], "lr": 1e-3})
    calib = Calibration([_batch(["w a", "w b c"])])
    return apply_plan(model, plan, calib, corpus=corpus, **kw)


def test_distillation_reads_the_corpus_in_each_epochs_order_and_caches_the_teacher(monkeypatch):
    teacher = _model()
    corpus = _corpus(n=40, batch_size=4)  # 10 batches an epoch
    seen = []
    orig = corpus.batch
    monkeypatch.setattr(corpus, "batch", lambda idx: (seen.append(list(idx)), orig(idx))[1])
    calls = []
    handle = teacher.register_forward_hook(lambda mod, *a: calls.append(1) if mod is teacher else None)
    student = _distill(teacher, corpus, 25)
    handle.remove()
    assert seen == corpus.epoch_batches(0) + corpus.epoch_batches(1) + corpus.epoch_batches(2)[:5]
    assert len(calls) == 10  # the teacher ran once per example (epoch 0), then the cache answered
    assert student.config.slimformer["plan"]["distill"]["steps"] == 25


def test_teacher_cache_on_disk_trains_exactly_like_in_memory():
    teacher = _model()
    in_memory = _corpus(n=24)
    on_disk = _corpus(n=24, memory_limit_mb=1e-6)
    a = _distill(teacher, in_memory, 12)
    b = _distill(teacher, on_disk, 12)
    assert on_disk.store.on_disk and not in_memory.store.on_disk
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    assert any(not torch.equal(p, q) for p, q in zip(a.state_dict().values(), teacher.state_dict().values()))


def test_hidden_loss_streams_the_teacher_batch_by_batch():
    teacher = _model()
    corpus = _corpus(n=8, batch_size=4)
    calls = []
    handle = teacher.register_forward_hook(lambda mod, *a: calls.append(1) if mod is teacher else None)
    plan = Plan(ffn=16, distill={"steps": 6, "losses": ["hidden"], "lr": 1e-3})
    apply_plan(teacher, plan, Calibration([_batch(["w a"])]), corpus=corpus)
    handle.remove()
    assert len(calls) == 6 and corpus.store is None  # token-level targets: never cached


def test_deadline_cuts_the_steps_and_the_plan_says_how_many_ran():
    teacher = _model()
    student = _distill(teacher, _corpus(n=40), 100_000, deadline=time.monotonic() + 0.5)
    ran = student.config.slimformer["plan"]["distill"]["steps"]
    assert 10 <= ran < 100_000


@pytest.mark.parametrize("steps", [9])
def test_calibration_batches_come_in_a_new_order_every_epoch(monkeypatch, steps):
    from slimformer.methods import distill as d

    batches = [_batch([f"w{i}"] * (i + 1)) for i in range(3)]
    calib = Calibration(batches, features=lambda out, inp: mean_pool(out.last_hidden_state, inp["attention_mask"]))
    order = []
    orig = d._loss
    monkeypatch.setattr(d, "_loss", lambda m, st, data, batch, tg: (order.append(
        next(i for i, b in enumerate(batches) if b is batch)), orig(m, st, data, batch, tg))[1])
    apply_plan(_model(), Plan(ffn=16, distill={"steps": steps, "losses": ["embedding"]}), calib)
    epochs = [order[i:i + 3] for i in range(0, steps, 3)]
    assert all(sorted(e) == [0, 1, 2] for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1


@pytest.mark.parametrize("dropout", [False, True])
def test_dropout_is_on_during_distillation_only_when_asked(dropout, monkeypatch):
    teacher = _model()  # BERT's default dropout 0.1 in its layers
    student_seen = []

    def record(mod, args):
        student_seen.append(mod.training)

    plan = Plan(heads=1, ffn=16, distill={"steps": 6, "losses": ["embedding"], "lr": 1e-3, "dropout": dropout})
    calib = Calibration([_batch(["w a", "w b c"])])
    import slimformer.methods.distill as D

    orig = D._loss

    def loss(model, *a):
        if not student_seen:
            for m in model.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.register_forward_pre_hook(record)
        return orig(model, *a)

    monkeypatch.setattr(D, "_loss", loss)
    student = apply_plan(teacher, plan, calib, corpus=_corpus(n=16))
    assert student_seen and set(student_seen) == {dropout}  # every training forward pass, as asked
    assert not student.training and not any(m.training for m in student.modules())  # handed back in eval mode
    assert student.config.slimformer["plan"]["distill"]["dropout"] is dropout


def test_dropout_must_be_a_boolean():
    with pytest.raises(ValueError, match="distill.dropout must be true or false"):
        Plan(distill={"steps": 1, "dropout": "yes"})
