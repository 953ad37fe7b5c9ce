"""The study files shipped in studies/ stay valid as the configuration schema changes."""

from __future__ import annotations

from pathlib import Path

import pytest
from slimformer.searcher.config import load_study_config
from slimformer.spaces.config import SpaceConfig

STUDIES = Path(__file__).resolve().parents[2] / "studies"


@pytest.mark.parametrize("name", sorted(p.name for p in STUDIES.glob("*.yaml")))
def test_shipped_study_file_loads(name):
    cfg = load_study_config(STUDIES / name)
    assert cfg.search.trials >= 1
    SpaceConfig(**cfg.space)  # the space section parses too (it is checked against the model later)


def test_quickstart_searches_distillation_and_int8():
    """The README's first command runs this file: it must exercise the joint space, recovery included."""
    space = SpaceConfig(**load_study_config(STUDIES / "quickstart.yaml").space)
    assert 0 in space.distill.steps and max(space.distill.steps) > 0
    assert "mask_tuning" in space.recovery.choices
    # the device decides the formats (docs/formats.md): 8 whatever the CPU, the static scheme where it runs
    assert space.bits.native and space.int8_scheme is None
    resolved = space.with_native([32, 8], ["dynamic", "static"])
    assert 8 in resolved.bits.choices and resolved.int8_scheme.choices == ["dynamic", "static"]
