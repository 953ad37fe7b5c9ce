"""Search spaces: the study file's `space:` section, Optuna sampling and Plan building.

Torch-free by design: imports only optuna, pydantic and `slimformer.methods.plan`.

Imports: methods. Never imports: torch.
"""

from .config import (
    NATIVE,
    AttentionDim,
    BitsDim,
    DepthDim,
    DistillDim,
    ImportanceDim,
    Int8SchemeDim,
    Int8WeightsDim,
    QuantMethodDim,
    RankDim,
    RecoveryDim,
    SmoothDim,
    SpaceConfig,
    SpaceError,
    WidthDim,
    default_space,
)
from .space import Space
from .validation import format_validation_error, parse_space_config

__all__ = [
    "Space", "SpaceConfig", "SpaceError", "WidthDim", "DepthDim", "BitsDim", "RankDim", "RecoveryDim",
    "ImportanceDim", "DistillDim", "QuantMethodDim", "SmoothDim", "Int8WeightsDim", "Int8SchemeDim", "AttentionDim",
    "default_space", "parse_space_config", "format_validation_error", "NATIVE",
]
