"""Study files, plans, profiles and exports are parsed without executing code: no pickle,
no `yaml.load`, no `torch.load`, no eval/exec, no remote code, anywhere in the package."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    r"\bimport pickle\b|\bfrom pickle\b|\bpickle\.load": "pickle",
    r"\byaml\.load\(|\byaml\.unsafe_load|\byaml\.full_load|Loader=yaml\.(?!Safe)": "unsafe YAML loader",
    r"\btorch\.load\(": "torch.load (pickle inside)",
    r"(?<![\w.])eval\(|(?<![\w.])exec\(": "eval/exec",
    r"trust_remote_code\s*=\s*True": "remote code",
}


def test_no_code_executing_loaders_in_the_package():
    found = []
    for folder in ("searcher", "spaces", "methods"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for lineno, line in enumerate(path.read_text().splitlines(), 1):
                for pattern, what in FORBIDDEN.items():
                    if re.search(pattern, line.split("#")[0]):
                        found.append(f"{path.relative_to(ROOT)}:{lineno}: {what}: {line.strip()}")
    assert not found, "\n".join(found)


def test_yaml_tags_do_not_run_code(tmp_path, expect_user_error, cli):
    marker = tmp_path / "pwned"
    study = tmp_path / "study.yaml"
    study.write_text(f"model: !!python/object/apply:os.system ['touch {marker}']\n")
    expect_user_error(cli("report", study, "--storage", tmp_path / "none.db"), "malformed YAML")
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"heads: !!python/object/apply:os.system ['touch {marker}']\n")
    expect_user_error(cli("predict", "--plan", plan, "--model", "minilm-l6"), "plan")
    assert not marker.exists()
