"""Every shipped study (studies/*.yaml) and recipe (studies/recipes/*.yaml) runs from a clone alone:
each file it reads (data splits, a device profile, a transfer source, a `recipe:` model and that
recipe's data) resolves to a file inside the repository, committed under studies/. Built-in
sources (`sklearn:digits:...`) and registered model aliases read no file of ours."""

from __future__ import annotations

from pathlib import Path

import pytest
from slimformer.searcher.config import load_study_config
from slimformer.searcher.problem import recipes

ROOT = Path(__file__).resolve().parents[2]
STUDIES = sorted((ROOT / "studies").glob("*.yaml"))
RECIPES = sorted((ROOT / "studies" / "recipes").glob("*.yaml"))


def _inside(path: Path, what: str) -> None:
    resolved = path.resolve()
    assert resolved.is_relative_to(ROOT), f"{what} reads {resolved}, outside the repository {ROOT}"
    assert resolved.is_file(), f"{what} reads {resolved}, which is not in the repository"


def _is_builtin(value: str) -> bool:
    return ":" in value.split("/")[0]  # sklearn:digits:train (the rule of recipes.Recipe.resolve)


def _recipe_files(recipe_path: Path) -> list[tuple[str, str]]:
    recipe = recipes.load_recipe(str(recipe_path))
    return [(f"{recipe_path.name} data.{split}", recipe.resolve(getattr(recipe.data, split).path))
            for split in ("train", "validation")]


def test_the_lists_are_not_empty():
    names = {p.name for p in STUDIES} | {p.name for p in RECIPES}
    assert {"quickstart.yaml", "gpt2-sst2.yaml", "minilm-sst2.yaml", "vit-digits.yaml"} <= names
    assert len(RECIPES) >= 3


@pytest.mark.parametrize("study", STUDIES, ids=lambda p: p.name)
def test_shipped_study_reads_only_files_in_the_repository(study):
    cfg = load_study_config(study)
    values = {f"data.{k}": getattr(cfg.data, k) for k in ("validation", "calibration", "test", "distill")}
    values["device.profile"] = cfg.device.profile
    values["transfer.source"] = cfg.transfer.source
    checked = 0
    for what, value in values.items():
        if value is None or _is_builtin(value):
            continue
        _inside(cfg.resolve_path(value), f"{study.name} {what}")
        checked += 1
    if cfg.model.name.startswith("recipe:"):
        recipe = recipes.recipe_path(cfg.model.name.removeprefix("recipe:"))
        _inside(recipe, f"{study.name} model")
        for what, value in _recipe_files(recipe):
            if not _is_builtin(value):
                _inside(Path(value), what)
    assert checked or cfg.data.validation is not None  # every shipped study names its validation data


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_shipped_recipe_reads_only_files_in_the_repository(recipe):
    files = list(_recipe_files(recipe))
    assert files, f"{recipe.name} names no data"  # every recipe trains on data it names
    for what, value in files:
        if not _is_builtin(value):
            _inside(Path(value), what)


def test_a_path_outside_is_caught(tmp_path):
    """The check itself: ../shared/data, the layout the SST-2 studies used to read, fails it."""
    with pytest.raises(AssertionError, match="outside the repository"):
        _inside(ROOT.parent / "shared" / "data" / "sst2" / "dev.tsv", "a study")
