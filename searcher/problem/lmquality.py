"""Quality of a causal LM that catches damage (docs/decoders.md).

- **Sliding-window perplexity** over a text as one token stream: windows of `context` tokens advancing
  by `stride`; each window predicts only the tokens not already predicted by an earlier window (the
  others are labelled -100), so every token after the first is predicted once, with at least
  `context - stride` tokens of context once the first window is past (Hugging Face's perplexity recipe).
- **Mean KL divergence** KL(original || candidate) of the next-token distributions and **top-1
  agreement** (how often the candidate's most likely next token is the original's), over the same
  predicted tokens. Perplexity alone hides damage: a model can keep its perplexity while its
  distributions drift (llama.cpp reports these statistics for that reason).

Imports: errors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UserError

__all__ = ["stream_windows", "next_token_agreement", "agreement"]


def stream_windows(tokenizer, texts: list[str], context: int, stride: int, batch_size: int = 8) -> list[dict]:
    """The texts joined by newlines as one token stream, cut into windows: batches of input_ids,
    attention_mask and labels (-100 where a token is context only)."""
    if not 0 < stride <= context:
        raise UserError(f"causal-lm: task.stride must be between 1 and task.max_length ({context}), got {stride}")
    ids = tokenizer("\n".join(texts), add_special_tokens=False)["input_ids"]
    if len(ids) < 2:
        raise UserError("causal-lm: the text has fewer than 2 tokens")
    windows, labels, done = [], [], 0  # done: tokens already predicted (position 0 is never a target)
    for start in range(0, len(ids), stride):
        end = min(start + context, len(ids))
        window = ids[start:end]
        fresh = end - max(done, start + 1)  # targets not predicted by an earlier window
        if fresh > 0:
            windows.append(window)
            labels.append([-100] * (len(window) - fresh) + window[len(window) - fresh:])
            done = end
        if end == len(ids):
            break
    out = []
    for i in range(0, len(windows), batch_size):
        w, lab = windows[i:i + batch_size], labels[i:i + batch_size]
        n = max(len(x) for x in w)
        out.append({"input_ids": _padded(w, 0, n), "attention_mask": _padded([[1] * len(x) for x in w], 0, n),
                    "labels": _padded(lab, -100, n)})
    return out


def _padded(rows: list[list[int]], value: int, n: int) -> torch.Tensor:
    return torch.tensor([r + [value] * (n - len(r)) for r in rows])


def next_token_agreement(reference_logits: torch.Tensor, logits: torch.Tensor,
                         keep: torch.Tensor | None = None) -> tuple[float, float, int]:
    """Summed KL(reference || candidate) in nats, summed top-1 agreements and the count, over the
    positions `keep` marks (all of them without it); logits are ... x vocab."""
    ref = F.log_softmax(reference_logits.float(), -1)
    cand = F.log_softmax(logits.float(), -1)
    if keep is None:
        keep = torch.ones(ref.shape[:-1], dtype=torch.bool)
    kl = (ref.exp() * (ref - cand)).sum(-1)
    same = ref.argmax(-1) == cand.argmax(-1)
    return float(kl[keep].double().sum()), float(same[keep].sum()), int(keep.sum())


def agreement(model, reference, batches: list[dict]) -> dict:
    """Mean KL (nats per token) and top-1 agreement (%) of `model` against `reference` on the batches'
    predicted tokens (labels != -100, shifted as in perplexity)."""
    kl = same = 0.0
    n = 0
    with torch.inference_mode():
        for b in batches:
            inputs = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}
            keep = b["labels"][:, 1:] != -100
            k, s, m = next_token_agreement(reference(**inputs).logits[:, :-1], model(**inputs).logits[:, :-1], keep)
            kl, same, n = kl + k, same + s, n + m
    if n == 0:
        raise UserError("causal-lm: no predicted tokens to compare with the original")
    return {"kl": kl / n, "top1_agreement": 100.0 * same / n, "kl_tokens": n}
