"""Task adapters: how a task scores a model, builds calibration batches and example inputs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from slimformer.methods.calibration import Calibration
from slimformer.methods.distill import mean_pool

from ..errors import UserError

__all__ = ["Task", "SentenceSimilarity", "TextClassification", "CausalLM", "ImageClassification", "get_task",
           "example_inputs"]


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

    def example_inputs(self, model, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
        """The fixed input timed for latency (device.batch_size x device.seq_len)."""
        return example_inputs(self.tokenizer, batch_size, seq_len)

    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
        return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    def corpus_batch(self, texts: list[str], labels: list | None = None) -> dict[str, torch.Tensor]:
        """A batch of single texts from a distillation corpus (with its labels when it has them)."""
        batch = self.encode(texts)
        if labels is not None:
            batch["labels"] = torch.tensor([int(v) for v in labels])
        return batch

    def corpus_features(self):
        """What the embedding loss compares on a corpus batch (a classifier's or LM's logits)."""
        return _logits

    def scored_features(self):
        """What the quality metric reads from one model call, for an export's check against PyTorch
        (a classifier's or LM's logits)."""
        return self.corpus_features()


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

        return Calibration(batches, loss_fn=loss_fn, model_inputs=lambda b: [b["a"], b["b"]], features=_pooled)

    def corpus_features(self):
        return _pooled

    def scored_features(self):
        """The sentence embedding's direction: cosine similarity, the score, ignores its length."""
        return _direction


def _pooled(out, inputs) -> torch.Tensor:
    """A sentence embedding from the output already computed: the mean of the last hidden state."""
    return mean_pool(out.last_hidden_state.float(), inputs.get("attention_mask"))


def _direction(out, inputs) -> torch.Tensor:
    """The unit-length sentence embedding (what cosine similarity compares)."""
    return F.normalize(_pooled(out, inputs), dim=-1)


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
        return _accuracy(model, batches, self.metric)

    def calibration(self, batches) -> Calibration:
        return Calibration(batches, features=_logits)


def _logits(out, inputs) -> torch.Tensor:
    """The distillation features of a classifier or LM: its logits (from the output already computed)."""
    return out.logits


def _accuracy(model, batches, metric: str) -> dict:
    """Accuracy and macro-F1 (x100) of argmax predictions against the batches' labels."""
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
    return {"quality": float((p == g).mean() * 100), "metric": metric,
            "macro_f1": float(f1_score(g, p, average="macro") * 100)}


def _max_positions(model) -> int | None:
    cfg = model.config
    for key in ("n_positions", "max_position_embeddings"):
        if getattr(cfg, key, None):
            return int(getattr(cfg, key))
    return None


@dataclass
class CausalLM(Task):
    """Language modelling: perplexity on the validation texts (exp of the mean next-token
    negative log-likelihood over all non-padding target tokens).

    The search maximises `quality`, so quality is the negative perplexity (metric
    "-perplexity"): higher is better, and budget.max_quality_drop is in perplexity points.
    The dict also carries `perplexity` itself and `nll` (nats per token).

    With `stride` (task.stride) the texts are one token stream scored in windows of max_length tokens
    advancing by stride (sliding-window perplexity, lmquality.py); without it each row on its own. With a
    `reference` model, quality also carries the mean KL divergence from the reference's next-token
    distributions and the top-1 agreement with them (docs/decoders.md)."""

    name = "causal-lm"
    metric = "-perplexity"
    model_class = "AutoModelForCausalLM"
    stride: int | None = None

    def _tok(self):
        tok = self.tokenizer
        if tok is None:
            raise UserError("causal-lm needs a tokenizer in the model folder")
        if tok.pad_token is None:  # GPT-2/Llama tokenizers ship without one; padding is masked anyway
            if tok.eos_token is None:
                raise UserError("causal-lm: the tokenizer has neither a pad nor an eos token to pad with")
            tok.pad_token = tok.eos_token
        return tok

    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self._tok()(texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt",
                          padding_side="right")
        return {k: enc[k] for k in ("input_ids", "attention_mask")}

    def corpus_batch(self, texts: list[str], labels: list | None = None) -> dict[str, torch.Tensor]:
        enc = self.encode(texts)
        return {**enc, "labels": enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)}

    def prepare(self, rows) -> list[dict]:
        texts = [str(x) for x in rows["text"] if x is not None and str(x).strip()]
        if not texts:
            raise UserError("causal-lm: the text column has no non-empty rows")
        if self.stride is not None:
            from .lmquality import stream_windows

            return stream_windows(self._tok(), texts, self.max_length, self.stride, self.batch_size)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = []
        for sl in _batches(len(order), self.batch_size):
            enc = self.encode([texts[i] for i in order[sl]])
            out.append({**enc, "labels": enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)})
        return out

    def quality(self, model, batches, reference=None) -> dict:
        """Perplexity; with `reference` (the original) also its KL divergence and top-1 agreement."""
        if reference is not None:
            from .lmquality import agreement

            return {**self.quality(model, batches), **agreement(model, reference, batches),
                    "context": self.max_length, "stride": self.stride}
        nll, n = 0.0, 0
        with torch.inference_mode():
            for b in batches:
                logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
                target = b["labels"][:, 1:]
                keep = target != -100
                lp = F.log_softmax(logits[:, :-1].float(), -1)
                tok_lp = lp.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
                nll -= float(tok_lp[keep].double().sum())
                n += int(keep.sum())
        if n == 0:
            raise UserError("causal-lm: the validation texts have no tokens to predict (all one token long?)")
        mean = nll / n
        ppl = math.exp(min(mean, 700.0))
        return {"quality": -ppl, "metric": self.metric, "perplexity": ppl, "nll": mean, "tokens": n}

    def calibration(self, batches) -> Calibration:
        # the model's own loss on labels = input ids (padding -100) drives Fisher importance;
        # distillation compares the logits
        return Calibration(batches, features=_logits)

    def example_inputs(self, model, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
        limit = _max_positions(model)
        if limit is not None and seq_len > limit:
            raise UserError(f"device.seq_len {seq_len} is longer than the model's {limit} positions")
        self._tok()
        return example_inputs(self.tokenizer, batch_size, seq_len)

    def generation_prompt(self, model, prompt_tokens: int, new_tokens: int) -> torch.Tensor:
        """The 1 x P prompt that device.generate times (devices/generate.py); P + G must fit the positions."""
        from ..devices.generate import prompt_ids

        limit = _max_positions(model)
        if limit is not None and prompt_tokens + new_tokens > limit:
            raise UserError(f"device.generate: {prompt_tokens} prompt + {new_tokens} new tokens exceed the "
                            f"model's {limit} positions")
        return prompt_ids(self._tok(), prompt_tokens)


@dataclass
class ImageClassification(Task):
    """Image classification: accuracy (and macro-F1) on the validation images. The model
    folder's image processor (preprocessor_config.json) turns images into pixel_values."""

    name = "image-classification"
    metric = "accuracy"
    model_class = "AutoModelForImageClassification"

    def pixels(self, images: list[np.ndarray]) -> torch.Tensor:
        if self.tokenizer is None or not hasattr(self.tokenizer, "preprocess"):
            raise UserError("image-classification needs an image processor (preprocessor_config.json) "
                            "in the model folder")
        arrays = []
        for im in images:
            a = np.asarray(im, dtype=np.float32)
            if a.ndim == 2:  # grayscale
                a = a[..., None]
            if a.ndim != 3:
                raise UserError(f"image-classification: an image must be HxW or HxWxC, got shape {a.shape}")
            arrays.append(a)
        out = self.tokenizer(images=arrays, return_tensors="pt", input_data_format="channels_last")
        return out["pixel_values"].float()

    def prepare(self, rows) -> list[dict]:
        try:
            labels = np.asarray(rows["label"], dtype=np.int64)
        except (TypeError, ValueError):
            raise UserError("image-classification: the label column must hold integer class ids") from None
        images = rows["image"]
        out = []
        for sl in _batches(len(labels), self.batch_size):
            out.append({"pixel_values": self.pixels(images[sl]), "labels": torch.tensor(labels[sl])})
        return out

    @staticmethod
    def _check_shape(model, pixel_values: torch.Tensor) -> None:
        cfg = model.config
        size, ch = getattr(cfg, "image_size", None), getattr(cfg, "num_channels", None)
        got = tuple(pixel_values.shape[1:])
        want = (ch, size, size) if size and ch else None
        if want is not None and got != want:
            raise UserError(f"image-classification: images become pixel_values of shape {got} but the model "
                            f"takes {want} (channels, height, width)")

    def quality(self, model, batches) -> dict:
        if batches:
            self._check_shape(model, batches[0]["pixel_values"])
        return _accuracy(model, batches, self.metric)

    def calibration(self, batches) -> Calibration:
        return Calibration(batches, features=_logits)

    def example_inputs(self, model, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
        """Random pixels of the model's image size (seq_len does not apply: the patch count is fixed)."""
        cfg = model.config
        size, ch = getattr(cfg, "image_size", None), getattr(cfg, "num_channels", 3)
        if not size:
            raise UserError("image-classification: the model config has no image_size")
        g = torch.Generator().manual_seed(0)
        return {"pixel_values": torch.randn(batch_size, ch, size, size, generator=g)}


_TASKS = {t.name: t for t in (SentenceSimilarity, TextClassification, CausalLM, ImageClassification)}


def get_task(name: str, tokenizer, max_length: int = 128, batch_size: int = 32, stride: int | None = None) -> Task:
    if name not in _TASKS:
        raise UserError(f"task {name!r} is not available yet; available: {', '.join(_TASKS)}")
    task = _TASKS[name](tokenizer=tokenizer, max_length=max_length, batch_size=batch_size)
    if stride is not None:
        if not isinstance(task, CausalLM):
            raise UserError(f"task.stride is for causal-lm (sliding-window perplexity), not {name}")
        task.stride = stride
    return task
