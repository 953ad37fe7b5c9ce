"""Function preservation: a physically pruned model computes exactly what the ORIGINAL model
computes with the same heads, FFN neurons and layers masked out, on every tiny architecture.

The masked reference is built here, from the test's own table of where each architecture keeps
its layers and output projections (not from the adapters under test): a forward pre-hook zeroes
the dropped heads' channels at the input of the attention output projection (grouped-query
attention drops whole KV groups: the query heads of a dropped group are zeroed), another zeroes
the dropped neurons at the input of the FFN output projection, and a dropped layer becomes the
identity on the residual stream (every architecture here adds its own residuals inside the layer).

Which units a plan keeps is driven through its importance scores (a patched `importance_scores`
gives the chosen units the highest score), so the kept sets are known and are not prefixes.
The weights are re-drawn at a larger scale (and biases and norm gains made non-trivial) so that
attention is far from uniform and a wrong slice moves the outputs far above the 1e-5 tolerance.

`mismatch` is the one check; the planted-bug tests at the end call it on deliberately broken
slicing and require it to report a mismatch.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
import torch
from slimformer.methods import Plan, apply_plan, importance
from slimformer.methods import adapters as adapter_module
from slimformer.methods import prune as prune_module
from slimformer.methods.lowrank import LowRankLinear

TOL = 1e-5  # relative to the largest output magnitude (float32)


pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Where the tiny architectures keep their layers (from the model root), and, per layer, the
# attention output projection and the FFN output projection (transformers 5 module names).
LAYOUT = {
    "bert": ("bert.encoder.layer", "attention.output.dense", "output.dense"),
    "roberta": ("roberta.encoder.layer", "attention.output.dense", "output.dense"),
    "xlm-roberta": ("roberta.encoder.layer", "attention.output.dense", "output.dense"),
    "electra": ("electra.encoder.layer", "attention.output.dense", "output.dense"),
    "distilbert": ("distilbert.transformer.layer", "attention.out_lin", "ffn.lin2"),
    "vit": ("vit.layers", "attention.o_proj", "mlp.fc2"),
    "gpt2": ("transformer.h", "attn.c_proj", "mlp.c_proj"),
    "llama": ("model.layers", "self_attn.o_proj", "mlp.down_proj"),
    "mistral": ("model.layers", "self_attn.o_proj", "mlp.down_proj"),
    "qwen2": ("model.layers", "self_attn.o_proj", "mlp.down_proj"),
    "qwen3": ("model.layers", "self_attn.o_proj", "mlp.down_proj"),
}
# The FFN input projections (one, or gate and up), for the low-rank checks.
FFN_IN = {"gpt2": ("mlp.c_fc",), "distilbert": ("ffn.lin1",), "vit": ("mlp.fc1",)}
GATED_IN = ("mlp.gate_proj", "mlp.up_proj")
BERT_IN = ("intermediate.dense",)


def ffn_paths(name: str) -> tuple[str, ...]:
    _, _, out = LAYOUT[name]
    ins = FFN_IN.get(name) or (GATED_IN if LAYOUT[name][0] == "model.layers" else BERT_IN)
    return ins + (out,)


def module_at(root: torch.nn.Module, path: str) -> torch.nn.Module:
    for part in path.split("."):
        root = getattr(root, part)
    return root


def spread(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Re-draw every weight with std 0.2 (random init's 0.02 leaves attention nearly uniform),
    biases ~ N(0, 0.1) and norm gains ~ 1 + N(0, 0.1), so that every slice matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim >= 2:
                p.copy_(0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(1 + 0.1 * noise)
    return model


@dataclass(frozen=True)
class Keep:
    """What a plan keeps: original layer indices, and per original layer the query heads and
    FFN neurons (sorted original indices)."""

    layers: tuple[int, ...]
    heads: tuple[tuple[int, ...], ...]
    ffn: tuple[tuple[int, ...], ...]

    def plan(self) -> Plan:
        return Plan(layers=list(self.layers), heads=[len(h) for h in self.heads], ffn=[len(f) for f in self.ffn])

    @classmethod
    def everything(cls, tiny) -> Keep:
        return cls(tuple(range(tiny.layers)), (tuple(range(tiny.heads)),) * tiny.layers,
                   (tuple(range(tiny.ffn)),) * tiny.layers)


def random_heads(tiny, n_groups: int, g: torch.Generator) -> tuple[int, ...]:
    """`n_groups` whole KV groups, chosen at random among the sets that are neither a prefix
    nor a suffix (with 2 groups only "not a prefix" is possible)."""
    per = tiny.heads // tiny.kv_heads
    groups = range(tiny.kv_heads)
    sets = [c for c in itertools.combinations(groups, n_groups)
            if c != tuple(groups[:n_groups]) and c != tuple(groups[-n_groups:])]
    sets = sets or [c for c in itertools.combinations(groups, n_groups) if c != tuple(groups[:n_groups])]
    chosen = sets[int(torch.randint(len(sets), (1,), generator=g))]
    return tuple(h for grp in chosen for h in range(grp * per, (grp + 1) * per))


def random_neurons(tiny, n: int, g: torch.Generator) -> tuple[int, ...]:
    while True:
        keep = tuple(sorted(torch.randperm(tiny.ffn, generator=g)[:n].tolist()))
        if keep != tuple(range(n)) and keep != tuple(range(tiny.ffn - n, tiny.ffn)):
            return keep


def keep_sets(tiny, case: str, seed: int = 0) -> Keep:
    """partial: drop the middle layer, about half the heads and 3/8 of the neurons elsewhere.
    zeros: keep every layer; one loses all its heads, another all its FFN neurons."""
    g = torch.Generator().manual_seed(seed)
    half = max(1, tiny.kv_heads // 2)
    all_ffn = tuple(range(tiny.ffn))
    if case == "partial":
        heads = tuple(random_heads(tiny, half, g) for _ in range(tiny.layers))
        ffn = tuple(random_neurons(tiny, 3 * tiny.ffn // 8, g) for _ in range(tiny.layers))
        return Keep((0, 2), heads, ffn)
    if case == "zeros":
        heads = ((), random_heads(tiny, half, g), random_heads(tiny, half, g))
        ffn = (random_neurons(tiny, tiny.ffn // 4, g), (), all_ffn)
        return Keep((0, 1, 2), heads, ffn)
    if case == "heads_only":
        return Keep((0, 1, 2), tuple(random_heads(tiny, half, g) for _ in range(3)), (all_ffn,) * 3)
    raise KeyError(case)


def channel_mask(kept: tuple[int, ...], n: int, width: int) -> torch.Tensor:
    m = torch.zeros(n * width)
    for i in kept:
        m[i * width:(i + 1) * width] = 1
    return m


def masked_outputs(tiny, base, keep: Keep, inputs) -> list[torch.Tensor]:
    """The original model's outputs with the units outside `keep` masked out (hooks removed after)."""
    layers_path, o_path, ffn_out_path = LAYOUT[tiny.name]

    def scale(mask):
        return lambda module, args: (args[0] * mask.to(args[0].dtype),) + tuple(args[1:])

    def identity(module, args, kwargs, output):
        return args[0] if args else kwargs["hidden_states"]

    handles = []
    try:
        for i, layer in enumerate(module_at(base, layers_path)):
            if i not in keep.layers:
                handles.append(layer.register_forward_hook(identity, with_kwargs=True))
                continue
            heads = channel_mask(keep.heads[i], tiny.heads, tiny.head_dim)
            handles.append(module_at(layer, o_path).register_forward_pre_hook(scale(heads)))
            neurons = channel_mask(keep.ffn[i], tiny.ffn, 1)
            handles.append(module_at(layer, ffn_out_path).register_forward_pre_hook(scale(neurons)))
        return outputs(base, inputs)
    finally:
        for h in handles:
            h.remove()


def outputs(model, inputs) -> list[torch.Tensor]:
    """The task logits and the backbone's last hidden state (every position)."""
    with torch.no_grad():
        return [model(**inputs).logits, model.base_model(**inputs)[0]]


def mismatch(tiny, base, small, keep: Keep) -> float:
    """Largest difference between `small` and `base` masked to `keep`, relative to the largest
    magnitude of the masked output, over the logits and the last hidden state of two batches."""
    worst = 0.0
    for seed in (1, 2):
        inputs = tiny.inputs(seed=seed)
        for want, got in zip(masked_outputs(tiny, base, keep, inputs), outputs(small, inputs), strict=True):
            assert got.shape == want.shape
            worst = max(worst, ((got - want).abs().max() / want.abs().max().clamp_min(1e-6)).item())
    return worst


def choose(monkeypatch, keep: Keep) -> list[str]:
    """Make the plan's importance scores rank the units of `keep` first; returns the list of
    importance kinds asked for (so a test can check the scores were used)."""
    calls = []

    def scores(adapter, kind, calibration, log=lambda m: None):
        calls.append(kind)
        shape = adapter.shape()
        heads = [channel_mask(h, shape.num_heads, 1) for h in keep.heads]
        ffn = [channel_mask(f, shape.intermediate_size, 1) for f in keep.ffn]
        return heads, ffn

    monkeypatch.setattr(prune_module, "importance_scores", scores)
    return calls


def pruned(monkeypatch, tiny, keep: Keep):
    base = spread(tiny.build())
    calls = choose(monkeypatch, keep)
    small = apply_plan(base, keep.plan())
    assert calls == ["magnitude"]
    return base, small


# ----- pruning ------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["partial", "zeros"])
def test_pruned_model_computes_the_masked_original(tiny, case, monkeypatch):
    keep = keep_sets(tiny, case)
    base, small = pruned(monkeypatch, tiny, keep)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in base.parameters())
    assert mismatch(tiny, base, small, keep) <= TOL


def test_keep_sets_are_not_prefixes(tiny):
    keep = keep_sets(tiny, "partial")
    for i in keep.layers:
        assert keep.heads[i] != tuple(range(len(keep.heads[i])))
        assert keep.ffn[i] != tuple(range(len(keep.ffn[i])))
    assert keep.layers == (0, 2)


def test_magnitude_importance_keeps_the_largest_units(tiny_models):
    """Unpatched: the kept heads (whole KV groups) and neurons are the top-scoring ones of the
    source model's magnitude scores, ranked here independently, and the function matches."""
    for name in ("bert", "gpt2", "qwen2"):
        tiny = tiny_models[name]
        base = spread(tiny.build())
        heads_s, ffn_s = importance.magnitude_scores(adapter_module.get_adapter(base))
        per = tiny.heads // tiny.kv_heads
        n_groups, n_neurons = max(1, tiny.kv_heads // 2), 20
        heads, ffn = [], []
        for hs, fs in zip(heads_s, ffn_s, strict=True):
            group_scores = hs.reshape(-1, per).sum(1).tolist()
            best = sorted(sorted(range(len(group_scores)), key=lambda j: -group_scores[j])[:n_groups])
            heads.append(tuple(h for grp in best for h in range(grp * per, (grp + 1) * per)))
            ffn.append(tuple(sorted(sorted(range(len(fs)), key=lambda j: -float(fs[j]))[:n_neurons])))
        keep = Keep((0, 1, 2), tuple(heads), tuple(ffn))
        small = apply_plan(base, keep.plan())
        assert mismatch(tiny, base, small, keep) <= TOL, name


def test_the_check_sees_a_wrong_keep_set(tiny_models, monkeypatch):
    """The reference is not vacuous: the right model against the wrong keep set mismatches."""
    tiny = tiny_models["bert"]
    keep = keep_sets(tiny, "partial")
    base, small = pruned(monkeypatch, tiny, keep)
    other = Keep(keep.layers, tuple(tuple(h for h in range(tiny.heads) if h not in hs) for hs in keep.heads),
                 keep.ffn)
    assert mismatch(tiny, base, small, other) > 100 * TOL


# ----- low rank ---------------------------------------------------------------------------


def ffn_weights(tiny, model) -> list[torch.Tensor]:
    """Every FFN projection's weight as [out, in] (GPT-2's Conv1D stores it transposed)."""
    out = []
    for layer in module_at(model, LAYOUT[tiny.name][0]):
        for path in ffn_paths(tiny.name):
            m = module_at(layer, path)
            if isinstance(m, LowRankLinear):
                out.append(m.up.weight @ m.down.weight)
            else:
                out.append(m.weight.t() if type(m).__name__ == "Conv1D" else m.weight)
    return [w.detach() for w in out]


def test_full_rank_factorisation_computes_the_original(tiny):
    base = spread(tiny.build())
    full = min(tiny.hidden, tiny.ffn)
    small = apply_plan(base, Plan(rank=full))
    n_ffn = len(ffn_paths(tiny.name))
    assert sum(isinstance(m, LowRankLinear) for m in small.modules()) == tiny.layers * n_ffn
    assert mismatch(tiny, base, small, Keep.everything(tiny)) <= TOL


def test_reduced_rank_error_is_the_discarded_spectrum(tiny):
    """||W - BA||_F = sqrt(sum of the discarded squared singular values) for every FFN
    projection (so BA is a best rank-r approximation, Eckart-Young), and the factorised model
    computes the original with each FFN weight replaced by its BA."""
    rank = 8
    base = spread(tiny.build())
    small = apply_plan(base, Plan(rank=rank))
    assert all(m.down.weight.shape[0] == rank for m in small.modules() if isinstance(m, LowRankLinear))
    products = ffn_weights(tiny, small)
    for w, got in zip(ffn_weights(tiny, base), products, strict=True):
        s = torch.linalg.svdvals(w.double())
        expected = s[rank:].pow(2).sum().sqrt().item()
        error = torch.linalg.matrix_norm(w.double() - got.double()).item()
        assert abs(error - expected) <= TOL * s.pow(2).sum().sqrt().item()
        assert expected > 0.1 * s[0].item()  # the truncation really discards something
    reference = spread(tiny.build())  # the same weights, FFN weights replaced below
    with torch.no_grad():
        weights = iter(products)
        for layer in module_at(reference, LAYOUT[tiny.name][0]):
            for path in ffn_paths(tiny.name):
                m, w = module_at(layer, path), next(weights)
                m.weight.copy_(w.t() if type(m).__name__ == "Conv1D" else w)
    assert mismatch(tiny, reference, small, Keep.everything(tiny)) <= TOL


# ----- planted bugs: the check must catch them -------------------------------------------------


def plant(monkeypatch, bug: str, tiny) -> None:
    """Break the slicing in one of three ways that keep every shape right."""
    slice_in, slice_out = adapter_module.slice_in, adapter_module.slice_out

    def in_width(module):
        return module.weight.shape[0] if type(module).__name__ == "Conv1D" else module.weight.shape[1]

    if bug == "first_channels":  # output projections keep their first input channels
        monkeypatch.setattr(adapter_module, "slice_in", lambda m, keep: slice_in(m, torch.arange(len(keep))))
    elif bug == "last_channels":  # ... or their last ones
        monkeypatch.setattr(adapter_module, "slice_in", lambda m, keep: slice_in(
            m, torch.arange(in_width(m) - len(keep), in_width(m))))
    elif bug == "first_rows":  # q/k/v and FFN input projections keep their first output channels
        monkeypatch.setattr(adapter_module, "slice_out", lambda m, keep: slice_out(m, torch.arange(len(keep))))
    elif bug == "fused_keys_from_queries":  # GPT-2's fused c_attn: the keys get the query channels

        def bad(module, keep):
            if type(module).__name__ == "Conv1D" and module.nf == 3 * tiny.hidden:
                n = len(keep) // 3
                keep = torch.cat([keep[:n], keep[:n], keep[2 * n:]])
            slice_out(module, keep)

        monkeypatch.setattr(adapter_module, "slice_out", bad)
    else:
        raise KeyError(bug)


@pytest.mark.parametrize("bug", ["first_channels", "last_channels", "first_rows"])
def test_planted_slicing_bugs_are_caught(tiny, bug, monkeypatch):
    keep = keep_sets(tiny, "partial")
    plant(monkeypatch, bug, tiny)
    base, small = pruned(monkeypatch, tiny, keep)
    assert mismatch(tiny, base, small, keep) > 100 * TOL


def test_planted_fused_qkv_bug_is_caught(tiny_models, monkeypatch):
    tiny = tiny_models["gpt2"]
    keep = keep_sets(tiny, "heads_only")
    plant(monkeypatch, "fused_keys_from_queries", tiny)
    base, small = pruned(monkeypatch, tiny, keep)
    c_attn = small.transformer.h[0].attn.c_attn
    assert c_attn.nf == 3 * len(keep.heads[0]) * tiny.head_dim  # the bug keeps the shapes right
    assert mismatch(tiny, base, small, keep) > 100 * TOL


def test_every_supported_model_type_has_a_tiny_model(tiny_models):
    """Every model type an adapter claims is built (and so pruned and checked) here; CamemBERT
    is RoBERTa's code under another name."""
    built = {t.build().config.model_type for t in tiny_models.values()}
    assert set(adapter_module.supported_model_types()) - {"camembert"} == built
