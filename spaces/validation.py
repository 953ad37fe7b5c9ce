"""Turning pydantic errors on the `space:` section into one clear line (key path first)."""

from __future__ import annotations

import difflib
import re
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from .config import SpaceConfig, SpaceError, default_space

__all__ = ["format_validation_error", "parse_space_config"]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    target: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = target.model_fields.get(part) if target else None
        target = _model_in(field.annotation) if field else None
        if target is None:
            return []
    return [name for name, f in target.model_fields.items() if not f.exclude]  # not `path` and the like


def _loc(root: str, loc: tuple, empty: str = "space") -> str:
    out = root
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not part.startswith(("function-", "literal[", "list[", "constrained-")):
            out += f".{part}" if out else part
    return out or empty


def format_validation_error(exc: ValidationError, root: str = "space", model: type[BaseModel] = SpaceConfig,
                            empty: str = "space") -> str:
    """One line for a pydantic error: `space.heads.choices: ...`; unknown keys get a did-you-mean.

    `model` is the class validated (to list the keys allowed where an unknown key was found);
    `root` prefixes the path (use "" when the error's locations already start at the root);
    `empty` names the path of an error at the top. The one formatter of validation errors: the
    study file's (searcher.config.format_error) and a recipe's use it too.
    """
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    err = errors[0]
    loc = tuple(err["loc"])
    path = _loc(root, loc, empty)
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        line = f"{path}: unknown key {loc[-1]!r}{hint}" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
    else:
        msg = err["msg"].replace("Value error, ", "").replace("Input should be", "must be")
        shown = err.get("input")
        quiet = isinstance(shown, dict) or err["type"] == "missing" or "got " in msg
        line = f"{path}: {msg}" + ("" if quiet else f" (got {shown!r})")
        if err["type"] == "literal_error" and isinstance(shown, str):
            close = difflib.get_close_matches(shown, re.findall(r"'([^']*)'", msg), n=1)
            line += f"; did you mean {close[0]!r}?" if close else ""
    return line


def parse_space_config(data: Any, root: str = "space") -> SpaceConfig:
    """Validate a `space:` mapping (None -> default_space()); raise SpaceError with one line."""
    if data is None:
        return default_space()
    if isinstance(data, SpaceConfig):
        return data
    if not isinstance(data, dict):
        raise SpaceError(f"{root}: must be a mapping of dimensions ({', '.join(SpaceConfig.model_fields)}), "
                         f"got {type(data).__name__}")
    try:
        return SpaceConfig.model_validate(data)
    except ValidationError as exc:
        raise SpaceError(format_validation_error(exc, root=root)) from None

