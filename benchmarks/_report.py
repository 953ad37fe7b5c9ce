"""How a benchmark script ends its Markdown report (shared by the scripts in this folder)."""

from __future__ import annotations

from pathlib import Path


def write_md(out: str, lines: list[str], note: str | None) -> None:
    """Writes `out`.md (the lines, then a "Conditions:" paragraph when a note is given) and prints it."""
    if note:
        lines = [*lines, "", f"Conditions: {note}"]
    text = "\n".join(lines)
    Path(out + ".md").write_text(text + "\n")
    print(text)
