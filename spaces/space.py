"""A search space bound to one model: Optuna parameters <-> Plan.

Parameter names (fixed choice lists per name, as Optuna 5 requires):

- `depth` (int in [min, max]) when `depth` is searched;
- per dimension `heads`, `ffn`, `rank`, `bits` by tie: `heads_L3` (per_layer, layer = ORIGINAL
  index), `heads_B1` (block:N, block b covers layers b*N .. b*N+N-1), `heads` (shared);
- `importance`, `recovery`; `quant_method`, `smooth` only in trials where a kept layer is
  quantized (bits 8/4/3/2: float32 and bfloat16 have no rounding to choose); `int8_weights` and
  `int8_scheme` only in trials where a kept layer is int8; `attention` only in trials that keep a head;
- `distill_steps`, then `distill_lr`, `distill_losses` (e.g. "embedding+hidden"),
  `distill_temperature`, `distill_alpha` only in trials with steps > 0.

A dimension with one choice is a constant: applied to the plan, never suggested.

Conditional parameters: a per-layer (or block) parameter is suggested only when its layer (or
one of its block's layers) is kept at the trial's depth, and `rank_*` only where a kept layer
keeps FFN neurons (ffn > 0). Dropped layers carry neutral values in the plan (full size,
rank 0, 32 bits) that no method reads. So `trial.params` holds exactly the decisions that
shaped the model. Optuna's TPE handles such conditional spaces best with
`TPESampler(multivariate=True, group=True)` (group decomposes the space by the parameter sets
seen in past trials); RandomSampler, NSGA-II and GP also accept them.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from slimformer.methods.plan import DistillSpec, ModelShape, Plan

from .config import CHOICE_ORDER, FLOAT_BITS, SpaceConfig, parse_tie, width_choices
from .validation import parse_space_config

__all__ = ["Space"]

_VERSION = 1  # bump when the params -> plan mapping changes meaning (changes every fingerprint)
_LAYERED = ("heads", "ffn", "rank", "bits")
_DISTILL = ("lr", "losses", "temperature", "alpha")
_QUANT = {"quant_method": "rtn", "smooth": 0.0}  # searched only where a kept layer is quantized; else these

Pick = Callable[[str], Any]


class Space:
    """A SpaceConfig resolved against a ModelShape: sampling, rebuilding and seeding plans."""

    def __init__(self, config: SpaceConfig, shape: ModelShape):
        config.check(shape)
        self.config, self.shape = config, shape
        n = shape.num_layers
        self._dists: dict[str, BaseDistribution] = {}  # every possible param, constants included
        self._kind: dict[str, str] = {}
        self._groups: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
        self._dropped_gqa: tuple[int, ...] = ()
        if config.depth is not None:
            self._add("depth", "depth", IntDistribution(*config.depth.bounds(n)))
        for key in _LAYERED:
            dim = getattr(config, key)
            if dim is None:
                continue
            if key == "heads":
                choices, self._dropped_gqa = width_choices(
                    dim, shape.num_heads, shape.heads_per_group, "heads", "attention heads")
            elif key == "ffn":
                choices, _ = width_choices(dim, shape.intermediate_size, 1, "ffn", "FFN neurons")
            else:
                choices = tuple(sorted(set(dim.choices)))
            self._groups[key] = _tie_groups(key, dim.tie, n)
            for name, _layers in self._groups[key]:
                self._add(name, key, CategoricalDistribution(choices))
        for key, order in CHOICE_ORDER.items():
            dim = getattr(config, key)
            if dim is not None:  # smooth ascending
                choices = sorted(set(dim.choices)) if order is None else [c for c in order if c in dim.choices]
                self._add(key, key, CategoricalDistribution(choices))
        if config.distill is not None:
            d = config.distill
            self._add("distill_steps", "distill_steps", CategoricalDistribution(sorted(set(d.steps))))
            losses = sorted({"+".join(dict.fromkeys(combo)) for combo in d.losses})
            for key, values in (("lr", sorted(set(d.lr))), ("losses", losses),
                                ("temperature", sorted(set(d.temperature))), ("alpha", sorted(set(d.alpha)))):
                self._add(f"distill_{key}", f"distill_{key}", CategoricalDistribution(values))

    @classmethod
    def from_dict(cls, data: dict | SpaceConfig | None, shape: ModelShape, root: str = "space") -> Space:
        """Validate a `space:` mapping (None = default_space()) and bind it to a model."""
        return cls(parse_space_config(data, root=root), shape)

    def _add(self, name: str, kind: str, dist: BaseDistribution) -> None:
        self._dists[name], self._kind[name] = dist, kind

    # ----- the one walk shared by sample / plan_from_params / seeding ------------------------
    def _choose(self, pick: Pick, name: str) -> Any:
        dist = self._dists[name]
        if isinstance(dist, IntDistribution):
            return dist.low if dist.low == dist.high else pick(name)
        return dist.choices[0] if len(dist.choices) == 1 else pick(name)

    def kept_layers(self, depth: int) -> tuple[int, ...]:
        """Original indices kept at `depth`, following `depth.drop` (top by default)."""
        n = self.shape.num_layers
        drop = self.config.depth.drop if self.config.depth is not None else "top"
        if depth >= n:
            return tuple(range(n))
        if drop == "top":
            return tuple(range(depth))
        if drop == "bottom":
            return tuple(range(n - depth, n))
        if depth == 1:  # spread: evenly spaced, first and last kept
            return (n - 1,)
        return tuple((2 * i * (n - 1) + depth - 1) // (2 * (depth - 1)) for i in range(depth))

    def _walk(self, pick: Pick) -> Plan:
        shape, n = self.shape, self.shape.num_layers
        depth = self._choose(pick, "depth") if "depth" in self._dists else n
        kept = set(self.kept_layers(depth))
        neutral = {"heads": shape.num_heads, "ffn": shape.intermediate_size, "rank": 0, "bits": 32}
        values: dict[str, tuple[int, ...] | None] = {}
        for key in _LAYERED:
            if key not in self._groups:
                values[key] = None
                continue
            per_layer = [neutral[key]] * n
            for name, layers in self._groups[key]:
                live = [i for i in layers if i in kept]
                if key == "rank":  # low-rank only where the FFN survives
                    ffn = values["ffn"]
                    live = [i for i in live if ffn is None or ffn[i] > 0]
                if live:
                    value = self._choose(pick, name)
                    for i in live:
                        per_layer[i] = value
            values[key] = tuple(per_layer)
        importance = self._choose(pick, "importance") if "importance" in self._dists else "magnitude"
        recovery = self._choose(pick, "recovery") if "recovery" in self._dists else "none"
        quantized = any(b not in FLOAT_BITS for b in values["bits"] or ())  # dropped layers carry 32
        quant = {key: self._choose(pick, key) if quantized and key in self._dists else default
                 for key, default in _QUANT.items()}
        for key in ("int8_weights", "int8_scheme"):  # only where a kept layer is int8
            if key in self._dists and 8 in (values["bits"] or ()):
                quant[key] = self._choose(pick, key)
        attends = values["heads"] is None or any(values["heads"][i] for i in kept)  # a kept layer keeps a head
        attention = self._choose(pick, "attention") if "attention" in self._dists and attends else None
        distill = DistillSpec()
        if "distill_steps" in self._dists:
            steps = self._choose(pick, "distill_steps")
            if steps > 0:
                extra = {key: self._choose(pick, f"distill_{key}") for key in _DISTILL}
                extra["losses"] = tuple(extra["losses"].split("+"))
                distill = DistillSpec(steps=steps, **extra)
        layers = tuple(sorted(kept)) if "depth" in self._dists else None
        return Plan(layers=layers, importance=importance, recovery=recovery, distill=distill, attention=attention,
                    **quant, **values)

    # ----- public API -------------------------------------------------------------------------
    def sample(self, trial: Any) -> Plan:
        """Suggest this trial's parameters (optuna Trial or FixedTrial) and return its Plan."""
        params: dict[str, Any] = {}

        def suggest(name: str) -> Any:
            dist = self._dists[name]
            if isinstance(dist, IntDistribution):
                params[name] = trial.suggest_int(name, dist.low, dist.high)
            else:
                params[name] = trial.suggest_categorical(name, dist.choices)
            return params[name]

        self._walk(suggest)
        return self.plan_from_params(params)

    def plan_from_params(self, params: dict[str, Any]) -> Plan:
        """Rebuild a trial's Plan from its stored params (other keys in `params` are ignored)."""

        def lookup(name: str) -> Any:
            if name not in params:
                raise ValueError(f"trial params lack {name!r}, which this space needs; "
                                 "was the study created with a different space?")
            value, dist = params[name], self._dists[name]
            ok = (isinstance(value, int) and dist.low <= value <= dist.high
                  if isinstance(dist, IntDistribution) else value in dist.choices)
            if not ok or isinstance(value, bool):
                allowed = (f"{dist.low}..{dist.high}" if isinstance(dist, IntDistribution)
                           else ", ".join(map(str, dist.choices)))
                raise ValueError(f"param {name} = {value!r} is not in this space; allowed: {allowed}")
            return value

        return self._walk(lookup)

    def _params_with(self, policy: Pick) -> dict[str, Any]:
        """The params a walk picks with `policy(name)` (exactly the names that plan uses)."""
        params: dict[str, Any] = {}

        def pick(name: str) -> Any:
            params[name] = policy(name)
            return params[name]

        self._walk(pick)
        return params

    def _extreme(self, largest: bool, sizes: str = "max", bits: int | None = None,
                 fixed: dict[str, Any] | None = None) -> dict[str, Any]:
        """Params of an extreme plan (`fixed`: parameters set to the given value instead)."""
        fixed = fixed or {}

        def policy(kind: str, dist: BaseDistribution) -> Any:
            if isinstance(dist, IntDistribution):  # depth
                return dist.high if largest else dist.low
            c = dist.choices
            if kind in ("heads", "ffn"):
                return c[len(c) // 2] if sizes == "middle" else c[-1] if largest else c[0]
            if kind == "bits":
                return bits if bits in c else c[-1] if largest else c[0]
            if kind == "int8_scheme":  # static int8 (activations too) is the cheaper one
                return c[0] if largest else c[-1]
            if kind == "rank":  # 0 = dense is the largest; the smallest is the lowest real rank
                nonzero = [r for r in c if r > 0]
                return (0 if 0 in c else c[-1]) if largest else (nonzero[0] if nonzero else 0)
            return c[0]  # importance: magnitude; quant_method: rtn; smooth: lowest; distill: fewest steps

        return self._params_with(lambda name: fixed[name] if name in fixed else
                                 policy(self._kind[name], self._dists[name]))

    def largest_plan(self) -> Plan:
        """The most expensive plan: full depth, largest heads/FFN, dense, highest bits."""
        return self.plan_from_params(self._extreme(largest=True))

    def smallest_plan(self) -> Plan:
        """The cheapest plan: fewest layers/heads/neurons, lowest non-zero rank, lowest bits."""
        return self.plan_from_params(self._extreme(largest=False))

    def choice_plans(self) -> list[Plan]:
        """The smallest plan with one parameter at a time set to each of its choices: every single
        choice of the space in one plan (on the smallest model, whose lowest bits quantize where
        the space can), for rules that one choice decides (e.g. what needs calibration data). A
        choice the walk does not read there (a dropped layer's `heads_L11`) adds no plan."""
        out: list[dict[str, Any]] = []
        for name, dist in self._dists.items():
            values = range(dist.low, dist.high + 1) if isinstance(dist, IntDistribution) else dist.choices
            for value in values:
                params = self._extreme(largest=False, fixed={name: value})
                if params not in out:
                    out.append(params)
        return [self.plan_from_params(params) for params in out]

    def uniform_plans(self) -> list[dict[str, Any]]:
        """Params dicts to `study.enqueue_trial`: the baseline (largest plan) first, then uniform
        plans (middle heads/FFN choice everywhere; all bits 16; all bits 8; middle heads/FFN
        with bits 8), without repeats."""
        candidates = [self._extreme(True), self._extreme(True, sizes="middle"),
                      self._extreme(True, bits=16), self._extreme(True, bits=8),
                      self._extreme(True, sizes="middle", bits=8)]
        out: list[dict[str, Any]] = []
        for params in candidates:
            if params not in out:
                out.append(params)
        return out

    def bits_choices(self) -> tuple[int, ...]:
        """The bit-widths the space allows, ascending; () when bits are not searched (all 32)."""
        groups = self._groups.get("bits")
        return tuple(self._dists[groups[0][0]].choices) if groups else ()

    def why_no_mixed_bits(self) -> str | None:
        """Why this space cannot give layers different bit-widths (so there is no mixed-precision
        plan to seed), or None when it can."""
        choices = self.bits_choices()
        if not choices:
            return "the space has no bits dimension"
        if len(choices) == 1:
            return f"bits has a single choice ({choices[0]})"
        if len(self._groups["bits"]) == 1:
            return f"bits are tied {self.config.bits.tie!r}: one bit-width for all layers"
        return None

    def params_for_bits(self, bits: int | Sequence[int], base: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Params (as `uniform_plans` gives them, for `study.enqueue_trial`): `base` (default: the
        largest plan's params) with the per-layer bits of `bits` (one per ORIGINAL layer index, or
        one int for all). Never fewer bits than asked: a value that is not a choice is rounded up
        to the next choice, and tied layers (block:N) take the highest value of their group.
        Layers `base` drops are ignored; a parameter `base` lacks (`quant_method`/`smooth` once a
        layer is quantized) takes its first (cheapest) choice. None when the space cannot mix bits (see
        `why_no_mixed_bits`). ValueError when a kept layer asks for more bits than any choice."""
        if self.why_no_mixed_bits() is not None:
            return None
        n = self.shape.num_layers
        want = (bits,) * n if isinstance(bits, int) else tuple(bits)
        if len(want) != n:
            raise ValueError(f"bits must have one entry per original layer ({n}), got {len(want)}")
        base = self._extreme(True) if base is None else base
        layers = self.plan_from_params(base).layers  # also checks that base fits this space
        kept = set(range(n) if layers is None else layers)
        choices = self.bits_choices()
        chosen: dict[str, int] = {}
        for name, group in self._groups["bits"]:
            live = [i for i in group if i in kept]
            if not live:
                continue
            asked = max(want[i] for i in live)
            up = [c for c in choices if c >= asked]
            if not up:
                raise ValueError(f"bits {asked} asked for layer(s) {', '.join(map(str, live))} is above every "
                                 f"choice of this space ({', '.join(map(str, choices))})")
            chosen[name] = up[0]
        return self._params_with(lambda name: chosen[name] if name in chosen else
                                 base[name] if name in base else self._dists[name].choices[0])

    def distributions(self) -> dict[str, BaseDistribution]:
        """The searched parameters (constants excluded) and their Optuna distributions."""
        return {name: d for name, d in self._dists.items() if _size(d) > 1}

    def dimensions(self) -> int:
        """How many parameters can be searched (conditional ones included)."""
        return len(self.distributions())

    def fingerprint(self) -> str:
        """A stable hash of what this space searches (shape, params, constants, drop rule)."""
        spec = {
            "version": _VERSION,
            "shape": asdict(self.shape),
            "drop": self.config.depth.drop if self.config.depth is not None else None,
            "params": {name: _as_json(d) for name, d in sorted(self._dists.items())},
            "groups": {key: [[name, list(layers)] for name, layers in groups]
                       for key, groups in sorted(self._groups.items())},
        }
        text = json.dumps(spec, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def describe(self) -> list[str]:
        """Human-readable lines: one per dimension, then what is not searched."""
        s = self.shape
        lines = [f"model: {s.num_layers} layers, {s.num_heads} heads ({s.num_kv_heads} KV), "
                 f"FFN {s.intermediate_size}, hidden {s.hidden_size}"]
        if "depth" in self._dists:
            d = self._dists["depth"]
            drop = self.config.depth.drop
            where = "spread evenly (first and last kept)" if drop == "spread" else f"from the {drop}"
            lines.append(f"depth: {d.low}..{d.high} layers kept (param depth), dropped {where}")
        for key in _LAYERED:
            if key not in self._groups:
                continue
            groups = self._groups[key]
            dist = self._dists[groups[0][0]]
            names = groups[0][0] if len(groups) == 1 else f"{groups[0][0]}..{groups[-1][0]}"
            tie = getattr(self.config, key).tie
            line = f"{key}: {', '.join(map(str, dist.choices))} ({tie}: {len(groups)} param(s) {names})"
            if key == "heads" and self._dropped_gqa:
                line += (f"; dropped {', '.join(map(str, self._dropped_gqa))} (not multiples of the "
                         f"KV group size {s.heads_per_group})")
            if key == "rank":
                line += "; 0 = dense; only for layers that keep FFN neurons"
            lines.append(line)
        for key in ("importance", "recovery"):
            if key in self._dists:
                lines.append(f"{key}: {', '.join(self._dists[key].choices)}")
        for key in _QUANT:
            if key in self._dists:
                lines.append(f"{key}: {', '.join(map(str, self._dists[key].choices))} (only in trials where a "
                             "kept layer is quantized: bits 8/4/3/2)")
        for key, what in (("int8_weights", "ONNX Runtime's int8 weights; only in trials where a kept layer is int8"),
                          ("int8_scheme", "int8 activations too (static, calibrated) or not; only in trials where a "
                           "kept layer is int8"),
                          ("attention", "PyTorch's attention implementation; only in trials that keep a head")):
            if key in self._dists:
                lines.append(f"{key}: {', '.join(self._dists[key].choices)} ({what})")
        if "distill_steps" in self._dists:
            parts = [f"steps {', '.join(map(str, self._dists['distill_steps'].choices))}"]
            parts += [f"{k} {', '.join(map(str, self._dists[f'distill_{k}'].choices))}" for k in _DISTILL]
            lines.append(f"distill: {'; '.join(parts)} (lr/losses/temperature/alpha only when steps > 0)")
        fixed = [k for k in ("depth", *_LAYERED, "importance", "recovery", *_QUANT, "distill")
                 if getattr(self.config, k) is None]
        if fixed:
            lines.append("not searched (full size, 32 bits, dense, magnitude, rtn, no smoothing, no distillation): "
                         f"{', '.join(fixed)}")
        combos = math.prod(_size(d) for d in self._dists.values())
        lines.append(f"{self.dimensions()} searched parameter(s); at most {combos:.3g} combinations; "
                     f"fingerprint {self.fingerprint()}")
        return lines


def _tie_groups(key: str, tie: str, n: int) -> list[tuple[str, tuple[int, ...]]]:
    mode, size = parse_tie(tie)
    if mode == "shared":
        return [(key, tuple(range(n)))]
    if mode == "per_layer":
        return [(f"{key}_L{i}", (i,)) for i in range(n)]
    return [(f"{key}_B{b}", tuple(range(b * size, min(n, (b + 1) * size)))) for b in range(math.ceil(n / size))]


def _size(dist: BaseDistribution) -> int:
    return dist.high - dist.low + 1 if isinstance(dist, IntDistribution) else len(dist.choices)


def _as_json(dist: BaseDistribution) -> Any:
    return {"int": [dist.low, dist.high]} if isinstance(dist, IntDistribution) else {"choices": list(dist.choices)}
