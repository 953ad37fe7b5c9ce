"""Compression methods: Plan (plain data, no torch), apply_plan and export (torch, loaded lazily).

Imports: nothing of ours (methods know no searcher).
"""

from .plan import DistillSpec, ModelShape, Plan

__all__ = [
    "Plan", "DistillSpec", "ModelShape", "apply_plan", "save_compressed", "load_compressed",
    "Calibration", "get_adapter", "supported_model_types", "model_size", "METHODS",
    "plan_needs_calibration", "ResolvedPlan", "resolve_plan",
]

_LAZY = {
    "apply_plan": "registry", "METHODS": "registry", "plan_of": "registry", "plan_needs_calibration": "registry",
    "ResolvedPlan": "registry", "resolve_plan": "registry",
    "save_compressed": "export", "load_compressed": "export", "ExportError": "export",
    "Calibration": "calibration", "get_adapter": "adapters", "supported_model_types": "adapters",
    "UnsupportedModelError": "adapters", "model_size": "size",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
