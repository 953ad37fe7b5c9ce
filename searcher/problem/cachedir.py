"""A cached model folder written once, atomically: built in a private folder beside its place and
renamed into it, so a reader never sees half a folder and two processes building it at once keep the
first one finished (the recipes' trained models, the GGUF models dequantized to float32).

Imports: nothing of slimformer.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = ["build_once"]

T = TypeVar("T")


def build_once(out: Path, make: Callable[[Path], T]) -> T:
    """`make(folder)` writes the folder's files into a fresh private folder beside `out`, which then
    becomes `out` (unless another process made `out` first: its folder is kept); nothing is left behind
    when `make` fails. Returns what `make` returned."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        result = make(tmp)
        if out.exists():  # another process finished first: keep its folder
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result
