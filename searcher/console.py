"""What every `slimformer` command shares: the default study, one-line messages on stderr,
JSON on stdout, argparse errors as one line with exit 2, plan and study loading.

Imports: errors, config, methods.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import UserError

__all__ = ["DEFAULT_STUDY", "Parser", "one_line", "log", "print_json", "load_plan", "check_out_dir",
           "study_or_default"]

DEFAULT_STUDY = "studies/quickstart.yaml"


def one_line(text: str) -> str:
    """Control characters (a newline in a file name, a fuzzed argument) shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit 2
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def load_plan(path: str):
    from slimformer.methods import Plan

    try:
        return Plan.load(path)
    except ValueError as exc:
        raise UserError(f"invalid plan {path}: {exc}") from None


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse a non-empty output folder before any model is loaded (export re-checks)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise UserError(f"{out} exists and is not empty; choose another --out or pass --force")


def study_or_default(path: str | None):
    from .config import load_study_config

    return load_study_config(path or DEFAULT_STUDY)


# ----- commands ---------------------------------------------------------------------------
