"""The Plan: a plain-data description of one compressed model (no torch import here).

A Plan says, per ORIGINAL layer index, what to keep and at which precision. It is frozen,
validated on construction (types, ranges, enumerations) and again against a model's shape
(`Plan.resolve`) where list lengths and upper bounds become known.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

__all__ = ["Plan", "DistillSpec", "ModelShape", "IMPORTANCE", "BITS", "SIMULATED_BITS", "QUANT_METHODS",
           "INT8_WEIGHTS", "INT8_SCHEMES", "ATTENTION_IMPLEMENTATIONS"]

IMPORTANCE = ("magnitude", "fisher")
BITS = (32, 16, 8, 4, 3, 2)
SIMULATED_BITS = (4, 3, 2)
RECOVERY = ("none", "mask_tuning")
DISTILL_LOSSES = ("logits", "hidden", "embedding", "attention")
QUANT_METHODS = ("rtn", "gptq")
# how a runtime that re-quantizes int8 layers itself (ONNX Runtime) stores their weights: "s8" signed
# per-channel, "u8" unsigned 7-bit per-channel (reduce_range); the first is the default
INT8_WEIGHTS = ("s8", "u8")
# what int8 layers quantize besides their weights: "dynamic" is each runtime's int8 without calibration
# (PyTorch and ONNX Runtime: activations quantized per call at run time; OpenVINO: int8 weights only,
# activations in its float precision); "static" quantizes the activations too, with scales calibrated on
# the study's calibration set (OpenVINO: nncf.quantize; ONNX Runtime: QDQ quantize_static); the first is
# the default
INT8_SCHEMES = ("dynamic", "static")
# transformers' stock attention implementations that need no extra package: the baseline's is the faster
# of them on the study's device, and a plan's `attention` may name either for its candidate in PyTorch
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")


@dataclass(frozen=True)
class ModelShape:
    """The shape facts a plan is checked against (taken from an architecture adapter)."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    hidden_size: int

    @property
    def heads_per_group(self) -> int:
        return self.num_heads // self.num_kv_heads


@dataclass(frozen=True)
class DistillSpec:
    """Knowledge distillation from the uncompressed model (the teacher)."""

    steps: int = 0
    temperature: float = 2.0
    alpha: float = 0.5
    losses: tuple[str, ...] = ("embedding",)
    lr: float = 1e-4
    freeze_embeddings: bool = True
    dropout: bool = False  # train with the model's dropout on (long runs: `slimformer finish`)

    def __post_init__(self) -> None:
        _check_int("distill.steps", self.steps, 0)
        if not isinstance(self.temperature, (int, float)) or self.temperature <= 0:
            raise ValueError(f"distill.temperature must be a number > 0, got {self.temperature!r}")
        if not isinstance(self.alpha, (int, float)) or not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"distill.alpha must be a number in [0, 1], got {self.alpha!r}")
        if not isinstance(self.lr, (int, float)) or self.lr <= 0:
            raise ValueError(f"distill.lr must be a number > 0, got {self.lr!r}")
        if not isinstance(self.dropout, bool):
            raise ValueError(f"distill.dropout must be true or false, got {self.dropout!r}")
        if not isinstance(self.losses, (str, list, tuple)):
            raise ValueError(f"distill.losses must be a loss name or a list of them, got {self.losses!r}")
        losses = (self.losses,) if isinstance(self.losses, str) else tuple(self.losses)
        for loss in losses:
            if loss not in DISTILL_LOSSES:
                raise ValueError(f"distill.losses: unknown loss {loss!r}; allowed: {', '.join(DISTILL_LOSSES)}")
        if not losses:
            raise ValueError(f"distill.losses must name at least one of {', '.join(DISTILL_LOSSES)}")
        object.__setattr__(self, "losses", losses)

    @property
    def enabled(self) -> bool:
        return self.steps > 0


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bound}, got {value}")


def _as_list(name: str, value: Any) -> int | tuple[int, ...] | None:
    """Per-layer fields accept None (unchanged), one int (every layer) or a list."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(value)
    raise ValueError(f"{name} must be an integer, a list of integers or null, got {type(value).__name__}")


@dataclass(frozen=True)
class Plan:
    """What to keep and how to store it, per original layer.

    layers: original indices of the transformer layers kept (None = all).
    heads: attention heads kept per layer (0 removes attention); None = all.
    ffn: FFN intermediate neurons kept per layer (0 removes the FFN); None = all.
    importance: how kept heads/neurons are chosen: "magnitude" or "fisher" (needs calibration).
    rank: per layer, rank of the SVD factorisation of the FFN projections (0/None = dense).
    bits: per layer weight bit-width: 32 float32, 16 bfloat16, 8 int8 (real kernel),
        4/3/2 simulated (round-to-nearest, group-wise).
    recovery: "none" or "mask_tuning" (after pruning, kept heads/neurons rescaled by least
        squares to reconstruct the uncompressed model's layer outputs; needs calibration).
    distill: distillation settings (steps=0 disables).
    group_size: input channels sharing one scale in 4/3/2-bit weights (int8 is per output channel).
    quant_method: how weights are rounded to 8/4/3/2 bits: "rtn" (round to nearest) or "gptq"
        (Frantar et al. 2022: error-compensating rounding from calibration data).
    smooth: SmoothQuant alpha in [0, 1] (Xiao et al. 2023); 0 = off. Before quantization, the
        inputs of the Linears that read a LayerNorm are divided per channel by s and their weight
        columns multiplied by s (needs calibration data).
    int8_weights: the weights of int8 layers in a runtime that quantizes them itself (ONNX Runtime):
        "s8" (signed, per channel) or "u8" (unsigned 7-bit, reduce_range: no saturation of u8 x s8
        products on CPUs without VNNI); other runtimes do not read it.
    attention: the attention implementation the candidate runs with in PyTorch ("sdpa" or "eager");
        None = the baseline's. Runtimes that export a graph (ONNX Runtime, OpenVINO) do not read it.
    int8_scheme: what int8 layers quantize in a runtime that quantizes them itself: "dynamic" (weights;
        activations at run time, or not at all in OpenVINO) or "static" (weights and activations, scales
        calibrated on the calibration set: needs calibration data). PyTorch runs only "dynamic".
    """

    layers: tuple[int, ...] | None = None
    heads: int | tuple[int, ...] | None = None
    ffn: int | tuple[int, ...] | None = None
    importance: str = "magnitude"
    rank: int | tuple[int, ...] | None = None
    bits: int | tuple[int, ...] | None = None
    recovery: str = "none"
    distill: DistillSpec = field(default_factory=DistillSpec)
    group_size: int = 64
    quant_method: str = "rtn"
    smooth: float = 0.0
    int8_weights: str = INT8_WEIGHTS[0]
    attention: str | None = None
    int8_scheme: str = INT8_SCHEMES[0]

    def __post_init__(self) -> None:
        if self.layers is not None:
            if not isinstance(self.layers, (list, tuple)):
                raise ValueError(f"layers must be a list of layer indices or null, got {self.layers!r}")
            layers = tuple(self.layers)
            for i in layers:
                _check_int("layers[]", i, 0)
            if len(set(layers)) != len(layers):
                raise ValueError(f"layers has duplicate indices: {list(layers)}")
            object.__setattr__(self, "layers", tuple(sorted(layers)))
        for name, low in (("heads", 0), ("ffn", 0), ("rank", 0)):
            value = _as_list(name, getattr(self, name))
            for i, v in enumerate(value if isinstance(value, tuple) else [value] if value is not None else []):
                _check_int(f"{name}[{i}]" if isinstance(value, tuple) else name, v, low)
            object.__setattr__(self, name, value)
        bits = _as_list("bits", self.bits)
        for v in bits if isinstance(bits, tuple) else [bits] if bits is not None else []:
            if v not in BITS:
                raise ValueError(f"bits: unknown bit-width {v!r}; allowed: {', '.join(map(str, BITS))}")
        object.__setattr__(self, "bits", bits)
        if self.importance not in IMPORTANCE:
            raise ValueError(f"importance must be one of {', '.join(IMPORTANCE)}, got {self.importance!r}")
        if self.recovery not in RECOVERY:
            raise ValueError(f"recovery must be one of {', '.join(RECOVERY)}, got {self.recovery!r}")
        _check_int("group_size", self.group_size, 8)
        if self.quant_method not in QUANT_METHODS:
            raise ValueError(f"quant_method must be one of {', '.join(QUANT_METHODS)}, got {self.quant_method!r}")
        if (isinstance(self.smooth, bool) or not isinstance(self.smooth, (int, float))
                or not 0.0 <= self.smooth <= 1.0):
            raise ValueError(f"smooth must be a number in [0, 1] (the SmoothQuant alpha; 0 = off), got {self.smooth!r}")
        object.__setattr__(self, "smooth", float(self.smooth))
        if self.int8_weights not in INT8_WEIGHTS:
            raise ValueError(f"int8_weights must be one of {', '.join(INT8_WEIGHTS)}, got {self.int8_weights!r}")
        if self.int8_scheme not in INT8_SCHEMES:
            raise ValueError(f"int8_scheme must be one of {', '.join(INT8_SCHEMES)}, got {self.int8_scheme!r}")
        if self.attention is not None and self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION_IMPLEMENTATIONS)} (or null: the "
                             f"baseline's), got {self.attention!r}")
        if isinstance(self.distill, dict):
            object.__setattr__(self, "distill", DistillSpec(**self.distill))
        elif not isinstance(self.distill, DistillSpec):
            raise ValueError(f"distill must be a mapping of distillation settings, got {self.distill!r}")

    # ----- resolution against a model -------------------------------------------------
    def resolve(self, shape: ModelShape) -> Plan:
        """Expand shorthands to full per-layer lists and check them against the model."""
        n = shape.num_layers
        layers = self.layers if self.layers is not None else tuple(range(n))
        for i in layers:
            if i >= n:
                raise ValueError(f"layers: index {i} out of range; the model has {n} layers (0..{n - 1})")

        def expand(name: str, default: int, high: int) -> tuple[int, ...]:
            value = getattr(self, name)
            if value is None:
                out = (default,) * n
            elif isinstance(value, int):
                out = (value,) * n
            else:
                out = value
            if len(out) != n:
                raise ValueError(f"{name} must have one entry per original layer ({n}), got {len(out)}")
            for i, v in enumerate(out):
                if v > high:
                    raise ValueError(f"{name}[{i}] = {v} exceeds the layer's {high}; allowed: 0..{high}")
            return tuple(out)

        heads = expand("heads", shape.num_heads, shape.num_heads)
        g = shape.heads_per_group
        if g > 1:
            for i, h in enumerate(heads):
                if h % g:
                    raise ValueError(
                        f"heads[{i}] = {h} is not a multiple of the KV group size {g} "
                        f"(grouped-query attention prunes whole groups); allowed: multiples of {g}"
                    )
        ffn = expand("ffn", shape.intermediate_size, shape.intermediate_size)
        rank = expand("rank", 0, min(shape.hidden_size, shape.intermediate_size))
        bits = self.bits if self.bits is not None else 32
        bits = (bits,) * n if isinstance(bits, int) else bits
        if len(bits) != n:
            raise ValueError(f"bits must have one entry per original layer ({n}), got {len(bits)}")
        return replace(self, layers=layers, heads=heads, ffn=ffn, rank=rank, bits=tuple(bits))

    @property
    def simulated(self) -> bool:
        """True when some weights use a bit-width with no real kernel here (4/3/2)."""
        bits = self.bits if isinstance(self.bits, tuple) else (self.bits,)
        return any(b in SIMULATED_BITS for b in bits if b is not None)

    # ----- serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        out["distill"]["losses"] = list(self.distill.losses)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        if not isinstance(data, dict):
            raise ValueError(f"a plan must be a mapping of fields, got {type(data).__name__}")
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(f"unknown plan field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
        data = dict(data)
        distill = data.get("distill")
        if isinstance(distill, dict):
            known = {f.name for f in fields(DistillSpec)}
            bad = sorted(set(distill) - known)
            if bad:
                raise ValueError(f"unknown distill field(s) {', '.join(bad)}; allowed: {', '.join(sorted(known))}")
            data["distill"] = DistillSpec(**distill)
        elif distill is None:
            data.pop("distill", None)
        try:
            return cls(**data)
        except TypeError as exc:  # e.g. a field given the wrong kind of value
            raise ValueError(f"invalid plan: {exc}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            data = json.loads(text)
        except RecursionError:
            raise ValueError("plan is not valid JSON: nested too deeply") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"plan is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    @classmethod
    def from_yaml(cls, text: str) -> Plan:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"plan is not valid YAML: {str(exc).splitlines()[0]}") from None
        except RecursionError:
            raise ValueError("plan is not valid YAML: nested too deeply") from None
        return cls.from_dict(data or {})

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"plan file not found: {path}")
        text = path.read_text()
        return cls.from_json(text) if path.suffix == ".json" else cls.from_yaml(text)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.write_text(self.to_json() if path.suffix == ".json" else self.to_yaml())
