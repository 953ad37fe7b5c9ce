"""The study file's `space:` section, validated with pydantic (no torch here).

Each dimension is optional; an omitted one is not searched (kept at the model's full size,
float32, dense, magnitude importance, rtn rounding without smoothing, no distillation). A bare
list is shorthand for `{choices: [...]}` (e.g. `bits: [32, 16, 8]`). Shape-dependent checks (a choice larger than
the model, grouped-query attention) happen in `SpaceConfig.check(shape)`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    field_validator,
    model_validator,
)
from slimformer.methods.plan import (
    ATTENTION_IMPLEMENTATIONS,
    BITS,
    DISTILL_LOSSES,
    IMPORTANCE,
    INT8_SCHEMES,
    INT8_WEIGHTS,
    QUANT_METHODS,
    RECOVERY,
    ModelShape,
)

__all__ = [
    "SpaceConfig", "WidthDim", "DepthDim", "BitsDim", "RankDim", "ImportanceDim", "DistillDim",
    "QuantMethodDim", "SmoothDim", "Int8WeightsDim", "Int8SchemeDim", "AttentionDim", "SpaceError", "CHOICE_ORDER", "default_space", "parse_tie", "NATIVE",
    "width_choices",
]

_TIE = re.compile(r"^block:(\d+)$")
FLOAT_BITS = (32, 16)  # bit-widths with no rounding (float32, bfloat16): quant_method/smooth do not apply


class SpaceError(ValueError):
    """A space that cannot be searched; the message is one line starting with the key path."""


def parse_tie(tie: str) -> tuple[str, int]:
    """`per_layer` -> ("per_layer", 1); `shared` -> ("shared", 0); `block:N` -> ("block", N)."""
    if tie == "per_layer":
        return "per_layer", 1
    if tie == "shared":
        return "shared", 0
    m = _TIE.match(tie) if isinstance(tie, str) else None
    if m and int(m.group(1)) >= 1:
        return "block", int(m.group(1))
    raise ValueError(f"tie must be per_layer, shared or block:N with N >= 1 (e.g. block:2), got {tie!r}")


def _tie(value: str) -> str:
    parse_tie(value)
    return value


def _bits(value: int) -> int:
    if value not in BITS:
        raise ValueError(f"{value} is not a supported bit-width; allowed: {', '.join(map(str, BITS))}")
    return value


def _non_empty(value: list) -> list:
    if not value:
        raise ValueError("must list at least one choice")
    return value


def _fraction(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"a fraction must be in [0, 1], got {value}")
    return value


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError(f"must be > 0, got {value}")
    return value


NonNegInt = Annotated[int, Strict(), Field(ge=0)]
Tie = Annotated[str, AfterValidator(_tie)]


def _choices(item: Any) -> Any:
    return Annotated[list[item], AfterValidator(_non_empty)]


Counts = _choices(NonNegInt)
Fractions = _choices(Annotated[float, AfterValidator(_fraction)])
Positives = _choices(Annotated[float, AfterValidator(_positive)])


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WidthDim(_Section):
    """Heads or FFN neurons kept per layer: absolute `choices` or `fractions` of the model's size."""

    choices: Counts | None = None
    fractions: Fractions | None = None
    tie: Tie = "per_layer"

    @model_validator(mode="after")
    def _one_of(self) -> WidthDim:
        if (self.choices is None) == (self.fractions is None):
            raise ValueError("give exactly one of choices (absolute counts) or fractions (of the model's size)")
        return self


class DepthDim(_Section):
    """Number of layers kept, searched in [min, max]; which ones are dropped follows `drop`."""

    min: Annotated[int, Strict(), Field(ge=1)] | None = None
    min_fraction: Annotated[float, AfterValidator(_fraction)] | None = None
    max: Annotated[int, Strict(), Field(ge=1)] | None = None
    drop: Literal["top", "bottom", "spread"] = "top"

    @model_validator(mode="after")
    def _bounds(self) -> DepthDim:
        if (self.min is None) == (self.min_fraction is None):
            raise ValueError("give exactly one of min (layers) or min_fraction (of the model's layers)")
        if self.min is not None and self.max is not None and self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self

    def bounds(self, num_layers: int) -> tuple[int, int]:
        low = self.min if self.min is not None else max(1, int(self.min_fraction * num_layers + 0.5))
        return low, self.max if self.max is not None else num_layers


NATIVE = "native"  # `bits: native`: the bit-widths (and int8 schemes) this device runs on real kernels


class BitsDim(_Section):
    """Per-layer bit-widths; `native` (the default space's choice) = what the study's runtimes run on a
    real kernel on this CPU, decided when the search starts (`SpaceConfig.with_native`)."""

    choices: _choices(Annotated[int, Strict(), AfterValidator(_bits)]) | Literal["native"]
    tie: Tie = "per_layer"

    @property
    def native(self) -> bool:
        return self.choices == NATIVE


class RankDim(_Section):
    """Low-rank factorisation of the FFN projections; 0 = dense."""

    choices: Counts
    tie: Tie = "shared"


class ImportanceDim(_Section):
    choices: _choices(Literal[IMPORTANCE])


class RecoveryDim(_Section):
    """Post-pruning recovery without training: none or least-squares mask tuning."""

    choices: _choices(Literal[RECOVERY])


class QuantMethodDim(_Section):
    """How weights are rounded to 8/4/3/2 bits: rtn or gptq (needs calibration); only searched in
    trials where a kept layer is quantized."""

    choices: _choices(Literal[QUANT_METHODS])


class SmoothDim(_Section):
    """SmoothQuant alpha (0 = off; > 0 needs calibration); only searched in trials where a kept
    layer is quantized."""

    choices: Fractions


class Int8WeightsDim(_Section):
    """How ONNX Runtime stores int8 weights: s8 (signed, per channel) or u8 (7-bit, reduce_range);
    only searched in trials where a kept layer is int8."""

    choices: _choices(Literal[INT8_WEIGHTS])


class Int8SchemeDim(_Section):
    """What int8 layers quantize: dynamic (weights; activations at run time, or float in OpenVINO) or
    static (weights and activations, calibrated; needs data.calibration); only searched in trials where
    a kept layer is int8."""

    choices: _choices(Literal[INT8_SCHEMES])


class AttentionDim(_Section):
    """The attention implementation a candidate runs with in PyTorch (sdpa or eager); only searched in
    trials that keep an attention head."""

    choices: _choices(Literal[ATTENTION_IMPLEMENTATIONS])


class DistillDim(_Section):
    """Distillation; lr/losses/temperature/alpha are only searched in trials with steps > 0."""

    steps: Counts
    lr: Positives = [1e-4]
    losses: _choices(_choices(Literal[DISTILL_LOSSES])) = [["embedding"]]
    temperature: Positives = [2.0]
    alpha: _choices(Annotated[float, Field(ge=0.0, le=1.0)]) = [0.5]

    @field_validator("losses", mode="before")
    @classmethod
    def _single_losses(cls, value: Any) -> Any:
        # `losses: [embedding, hidden]` = two choices of one loss each; `[[embedding, hidden]]` = one pair
        if isinstance(value, list):
            return [[v] if isinstance(v, str) else v for v in value]
        return value


_DIMS = ("heads", "ffn", "bits", "rank", "importance", "recovery", "quant_method", "smooth", "int8_weights",
         "int8_scheme", "attention")
# the categorical dimensions without a tie, each one's choices in this order (None: ascending)
CHOICE_ORDER = {"importance": IMPORTANCE, "recovery": RECOVERY, "quant_method": QUANT_METHODS, "smooth": None,
                "int8_weights": INT8_WEIGHTS, "int8_scheme": INT8_SCHEMES, "attention": ATTENTION_IMPLEMENTATIONS}


class SpaceConfig(_Section):
    """The `space:` section: which dimensions are searched and over what."""

    heads: WidthDim | None = None
    ffn: WidthDim | None = None
    depth: DepthDim | None = None
    bits: BitsDim | None = None
    rank: RankDim | None = None
    importance: ImportanceDim | None = None
    recovery: RecoveryDim | None = None
    quant_method: QuantMethodDim | None = None
    smooth: SmoothDim | None = None
    int8_weights: Int8WeightsDim | None = None
    int8_scheme: Int8SchemeDim | None = None
    attention: AttentionDim | None = None
    distill: DistillDim | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            for key in _DIMS:
                if isinstance(data.get(key), list) or (key == "bits" and data.get(key) == NATIVE):
                    data[key] = {"choices": data[key]}
            if isinstance(data.get("depth"), int) and not isinstance(data.get("depth"), bool):
                data["depth"] = {"min": data["depth"]}
        return data

    def with_native(self, bits: list[int], schemes: list[str]) -> SpaceConfig:
        """This space with `bits: native` made concrete: the device's bit-widths `bits`, and unless the
        space names its own, the int8 schemes `schemes` (searched where more than one and 8 is a choice)."""
        if self.bits is None or not self.bits.native:
            return self
        update = {"bits": self.bits.model_copy(update={"choices": list(bits)})}
        if self.int8_scheme is None and 8 in bits and len(schemes) > 1:
            update["int8_scheme"] = Int8SchemeDim(choices=list(schemes))
        return self.model_copy(update=update)

    def check(self, shape: ModelShape) -> None:
        """Raise SpaceError (one line, key path first) if a choice does not fit this model."""
        n = shape.num_layers
        if self.bits is not None and self.bits.native:
            raise SpaceError("space.bits: native is decided by the device when the search starts "
                             "(SpaceConfig.with_native) and cannot be bound to a model as it is")
        if self.heads is not None:
            width_choices(self.heads, shape.num_heads, shape.heads_per_group, "heads", "attention heads")
        if self.ffn is not None:
            width_choices(self.ffn, shape.intermediate_size, 1, "ffn", "FFN neurons")
        if self.depth is not None:
            low, high = self.depth.bounds(n)
            for key, v in (("min", low), ("max", high)):
                if v > n:
                    raise SpaceError(f"space.depth.{key}: {v} is more than the model's {n} layers; allowed: 1..{n}")
            if high < low:
                raise SpaceError(f"space.depth.max: {high} is less than depth.min ({low})")
        rounded = self.bits is not None and any(b not in FLOAT_BITS for b in self.bits.choices)  # never native here
        for key in ("quant_method", "smooth"):
            if getattr(self, key) is not None and not rounded:
                raise SpaceError(f"space.{key}: only searched where a layer is quantized, but space.bits has no "
                                 f"8/4/3/2 choice; add one to space.bits or remove space.{key}")
        for key in ("int8_weights", "int8_scheme"):
            if getattr(self, key) is not None and (self.bits is None or 8 not in self.bits.choices):
                raise SpaceError(f"space.{key}: only searched where a layer is int8, but space.bits has no 8; "
                                 f"add 8 to space.bits or remove space.{key}")
        if self.rank is not None:
            cap = min(shape.hidden_size, shape.intermediate_size)
            for i, r in enumerate(self.rank.choices):
                if r > cap:
                    raise SpaceError(
                        f"space.rank.choices[{i}]: {r} exceeds min(hidden {shape.hidden_size}, "
                        f"FFN {shape.intermediate_size}) = {cap}; allowed: 0 (dense)..{cap}"
                    )


def width_choices(dim: WidthDim, total: int, group: int, key: str, what: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Resolve a heads/FFN dimension to (sorted unique choices, choices dropped for GQA).

    Fractions count whole groups when `group` > 1 (grouped-query attention prunes whole KV
    groups) and are rounded half-up, at least one unit when the fraction is > 0. Absolute
    choices that are not multiples of `group` are filtered out; none left is an error.
    """
    if dim.fractions is not None:
        units = total // group
        out = {group * (max(1, int(f * units + 0.5)) if f > 0 else 0) for f in dim.fractions}
        return tuple(sorted(out)), ()
    for i, v in enumerate(dim.choices):
        if v > total:
            raise SpaceError(f"space.{key}.choices[{i}]: {v} is more than the model's {total} {what}; allowed: 0..{total}")
    kept = tuple(sorted({v for v in dim.choices if v % group == 0}))
    dropped = tuple(sorted({v for v in dim.choices if v % group}))
    if not kept:
        raise SpaceError(
            f"space.{key}.choices: none of {', '.join(map(str, dropped))} is a multiple of the KV group size "
            f"{group} (grouped-query attention prunes whole groups); use multiples of {group} up to {total}"
        )
    return kept, dropped


def default_space() -> SpaceConfig:
    """The space searched when the study has no `space:` section: widths, depth, bits, importance,
    recovery without training (mask tuning) and a short distillation (0 or 100 steps)."""
    return SpaceConfig(
        heads=WidthDim(fractions=[0.25, 0.5, 0.75, 1.0]),
        ffn=WidthDim(fractions=[0.25, 0.5, 0.75, 1.0]),
        depth=DepthDim(min_fraction=0.5),
        bits=BitsDim(choices=[32, 16, 8]),  # searcher.search makes it the device's native choices
        importance=ImportanceDim(choices=["magnitude", "fisher"]),
        recovery=RecoveryDim(choices=["none", "mask_tuning"]),
        distill=DistillDim(steps=[0, 100]),
    )
