"""Task adapters: how a task scores a model, builds calibration batches and example inputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from slimformer.methods.calibration import Calibration
from slimformer.methods.distill import mean_pool

from .errors import UserError

__all__ = ["Task", "SentenceSimilarity", "TextClassification", "get_task", "example_inputs"]


def _batches(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


def example_inputs(tokenizer, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
    """A fixed-shape input for latency: real tokens, exactly seq_len long, no padding."""
    text = "The quick brown fox jumps over the lazy dog near the river bank at dawn. " * (seq_len // 8 + 2)
    enc = tokenizer([text] * batch_size, truncation=True, max_length=seq_len, padding="max_length",
                    return_tensors="pt")
    return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


@dataclass
class Task:
    name = ""
    metric = ""
    model_class = "AutoModel"
    tokenizer: object = None
    max_length: int = 128
    batch_size: int = 32

    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
        return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


@dataclass
class SentenceSimilarity(Task):
    """Mean-pooled embeddings, cosine similarity, Spearman x100 against gold scores (STS-B)."""

    name = "sentence-similarity"
    metric = "spearman"
    model_class = "AutoModel"

    def prepare(self, rows) -> list[dict]:
        """Tokenized batches, pairs sorted by length (less padding; Spearman ignores order)."""
        s1, s2 = [str(x) for x in rows["sentence1"]], [str(x) for x in rows["sentence2"]]
        try:
            scores = np.asarray(rows["score"], dtype=np.float32)
        except (TypeError, ValueError):
            raise UserError("sentence-similarity: the score column must be numeric") from None
        order = sorted(range(len(s1)), key=lambda i: max(len(s1[i]), len(s2[i])))
        top = float(max(scores.max(), 1e-6))
        out = []
        for sl in _batches(len(order), self.batch_size):
            idx = order[sl]
            out.append({
                "a": self.encode([s1[i] for i in idx]),
                "b": self.encode([s2[i] for i in idx]),
                "score": torch.tensor(scores[idx] / top),
            })
        return out

    @staticmethod
    def embed(model, inputs) -> torch.Tensor:
        out = model(**inputs)
        return mean_pool(out.last_hidden_state.float(), inputs.get("attention_mask"))

    def quality(self, model, batches) -> dict:
        from scipy.stats import spearmanr

        sims, gold = [], []
        with torch.inference_mode():
            for b in batches:
                sims.append(F.cosine_similarity(self.embed(model, b["a"]), self.embed(model, b["b"])).numpy())
                gold.append(b["score"].numpy())
        rho = spearmanr(np.concatenate(sims), np.concatenate(gold)).statistic
        return {"quality": float(rho * 100), "metric": self.metric}

    def calibration(self, batches) -> Calibration:
        def loss_fn(model, batch):
            cos = F.cosine_similarity(self.embed(model, batch["a"]), self.embed(model, batch["b"]))
            return F.mse_loss(cos, batch["score"])

        return Calibration(
            batches, loss_fn=loss_fn, model_inputs=lambda b: [b["a"], b["b"]],
            features=lambda model, inputs: self.embed(model, inputs),
        )


@dataclass
class TextClassification(Task):
    """Sequence classification: accuracy (and macro-F1) on the validation split (SST-2)."""

    name = "text-classification"
    metric = "accuracy"
    model_class = "AutoModelForSequenceClassification"

    def prepare(self, rows) -> list[dict]:
        texts = [str(x) for x in rows["text"]]
        try:
            labels = np.asarray(rows["label"], dtype=np.int64)
        except (TypeError, ValueError):
            raise UserError("text-classification: the label column must hold integer class ids") from None
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = []
        for sl in _batches(len(order), self.batch_size):
            idx = order[sl]
            out.append({**self.encode([texts[i] for i in idx]), "labels": torch.tensor(labels[idx])})
        return out

    def quality(self, model, batches) -> dict:
        from sklearn.metrics import f1_score

        n_labels = model.config.num_labels
        preds, gold = [], []
        with torch.inference_mode():
            for b in batches:
                if int(b["labels"].max()) >= n_labels:
                    raise UserError(f"labels go up to {int(b['labels'].max())} but the model has {n_labels} classes")
                inputs = {k: v for k, v in b.items() if k != "labels"}
                preds.append(model(**inputs).logits.argmax(-1).numpy())
                gold.append(b["labels"].numpy())
        p, g = np.concatenate(preds), np.concatenate(gold)
        return {"quality": float((p == g).mean() * 100), "metric": self.metric,
                "macro_f1": float(f1_score(g, p, average="macro") * 100)}

    def calibration(self, batches) -> Calibration:
        def features(model, inputs):
            return model(**inputs).logits

        return Calibration(batches, features=features)


_TASKS = {t.name: t for t in (SentenceSimilarity, TextClassification)}


def get_task(name: str, tokenizer, max_length: int = 128, batch_size: int = 32) -> Task:
    if name not in _TASKS:
        raise UserError(f"task {name!r} is not available yet; available: {', '.join(_TASKS)}")
    return _TASKS[name](tokenizer=tokenizer, max_length=max_length, batch_size=batch_size)
