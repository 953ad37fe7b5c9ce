"""How a benchmark script ends its Markdown report (shared by the scripts in this folder)."""

from __future__ import annotations

from pathlib import Path


def cpu_line() -> str:
    """The CPU this ran on and the ISA flags that decide which kernels pay (the results vary by CPU)."""
    from slimformer.searcher.devices.latency import device_facts

    facts = device_facts()
    return (f"CPU: **{facts['cpu']}**, {facts['cores']} cores; ISA flags: "
            f"{', '.join(facts['flags']) or 'none of avx2/avx512/vnni/bf16/amx'}")


def write_md(out: str, lines: list[str], note: str | None) -> None:
    """Writes `out`.md (the title line, the CPU line, the other lines, then a "Conditions:" paragraph when a
    note is given) and prints it."""
    lines = [*lines[:1], "", cpu_line(), *lines[1:]]
    if note:
        lines = [*lines, "", f"Conditions: {note}"]
    text = "\n".join(lines)
    Path(out + ".md").write_text(text + "\n")
    print(text)
