"""The house rules of the package (docs/architecture.md), read from the source with `ast`.

Every unit (a sub-package of searcher/, a top-level module of searcher/, spaces/, methods/) says
in its docstring which units it may import, on a line `Imports: a, b, c.` (`everything`: all
units), and optionally third-party packages it must not import, on `Never imports: x.`. Imports
are read everywhere in a module, function-level imports included.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"slimformer.searcher": ROOT / "searcher", "slimformer.spaces": ROOT / "spaces",
            "slimformer.methods": ROOT / "methods"}
MAX_LINES = 400


@dataclass
class Module:
    name: str
    path: Path
    tree: ast.Module
    imports: list[tuple[str, int]] = field(default_factory=list)  # (module it imports, line)
    private: list[tuple[str, int]] = field(default_factory=list)  # (module._name it uses, line)


def _modules() -> dict[str, Module]:
    mods = {}
    for pkg, folder in PACKAGES.items():
        for f in sorted(folder.rglob("*.py")):
            parts = list(f.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([pkg, *parts])
            mods[name] = Module(name, f, ast.parse(f.read_text(), str(f)))
    for m in mods.values():
        _read_imports(m, mods)
    return mods


def _read_imports(m: Module, mods: dict[str, Module]) -> None:
    package = m.name if m.path.name == "__init__.py" else m.name.rpartition(".")[0]
    aliases = {}  # local name -> one of our modules (import x.y as z; from . import onnxbench)
    for node in ast.walk(m.tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                m.imports.append((a.name, node.lineno))
                if a.name in mods and a.asname:
                    aliases[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for a in node.names:
                sub = f"{source}.{a.name}"
                if sub in mods:  # from . import onnxbench
                    m.imports.append((sub, node.lineno))
                    aliases[a.asname or a.name] = sub
                    continue
                m.imports.append((source, node.lineno))
                if source in mods and a.name.startswith("_") and not a.name.startswith("__"):
                    m.private.append((f"{source}.{a.name}", node.lineno))
    for node in ast.walk(m.tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases \
                and node.attr.startswith("_") and not node.attr.startswith("__"):
            m.private.append((f"{aliases[node.value.id]}.{node.attr}", node.lineno))


MODS = _modules()


def _unit(name: str) -> str | None:
    """The unit a module of ours belongs to: 'spaces', 'methods', 'search', 'study', ..."""
    parts = name.split(".")
    if parts[1] in ("spaces", "methods"):
        return parts[1]
    if len(parts) == 2:
        return "searcher"  # the package's __init__ (lazy re-exports only)
    return parts[2]


def _ours(name: str) -> str | None:
    """The longest of our modules that `name` (an imported module) is, or None (third party)."""
    while name:
        if name in MODS:
            return name
        name = name.rpartition(".")[0]
    return None


def _unit_docstring(unit: str) -> tuple[str, Path]:
    if unit in ("spaces", "methods"):
        path = PACKAGES[f"slimformer.{unit}"] / "__init__.py"
    elif (PACKAGES["slimformer.searcher"] / unit).is_dir():
        path = PACKAGES["slimformer.searcher"] / unit / "__init__.py"
    else:
        path = PACKAGES["slimformer.searcher"] / f"{unit}.py"
    return ast.get_docstring(ast.parse(path.read_text())) or "", path


UNITS = sorted({_unit(n) for n in MODS} - {"searcher"})


def _rules(unit: str) -> tuple[set[str], set[str]]:
    doc, path = _unit_docstring(unit)
    flat = " ".join(doc.split())
    allowed = re.search(r"Imports: ([^.]*)\.", flat)
    assert allowed, f"{path.relative_to(ROOT)}: its docstring has no 'Imports: ...' line"
    words = re.sub(r"\([^)]*\)", "", allowed.group(1)).split(",")  # (a remark) is not a unit
    names = {w.strip() for w in words if w.strip() and w.strip() != "nothing of ours"}
    if "everything" in names:
        names = set(UNITS)
    unknown = names - set(UNITS)
    assert not unknown, f"{path.relative_to(ROOT)}: 'Imports:' names no unit {sorted(unknown)}"
    never = re.search(r"Never imports: ([^.]*)\.", flat)
    banned = {w.strip() for w in never.group(1).split(",")} if never else set()
    return names | {unit}, banned


def _graph() -> dict[str, set[str]]:
    return {n: {o for imp, _ in m.imports if (o := _ours(imp)) and o != n} for n, m in MODS.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_reader_sees_every_kind_of_import():
    """The checks below are only as good as the reader: function-level and relative imports count."""
    g = _graph()
    assert "slimformer.searcher.cost.onnxbench" in g["slimformer.searcher.cost.microbench"]  # `from . import onnxbench` in a function
    assert "slimformer.searcher.study.records" in g["slimformer.searcher.backends.workers"]  # function-level, `..`
    assert "slimformer.methods.plan" in g["slimformer.spaces.space"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle():
    assert _cycles(_graph()) == []


@pytest.mark.parametrize("unit", UNITS)
def test_imports_follow_the_rules(unit):
    allowed, banned = _rules(unit)
    bad = []
    for n, m in MODS.items():
        if _unit(n) != unit:
            continue
        for imp, line in m.imports:
            ours = _ours(imp)
            if ours is not None and _unit(ours) not in allowed | {"searcher"}:
                bad.append(f"{m.path.relative_to(ROOT)}:{line} imports {ours}")
            if ours is None and imp.split(".")[0] in banned:
                bad.append(f"{m.path.relative_to(ROOT)}:{line} imports {imp} (never imports: {sorted(banned)})")
    assert not bad, "\n".join(bad)


def test_modules_are_small():
    big = [f"{m.path.relative_to(ROOT)}: {n} lines" for m in MODS.values()
           if (n := len(m.path.read_text().splitlines())) > MAX_LINES]
    assert not big, "\n".join(big)


def test_no_module_uses_another_modules_underscore_names():
    bad = [f"{m.path.relative_to(ROOT)}:{line} uses {name}" for m in MODS.values() for name, line in m.private
           if name.rpartition(".")[0] != m.name]
    assert not bad, "\n".join(bad)


def test_the_wheel_lists_every_package():
    """setuptools installs only the packages pyproject lists: a sub-package left out would be missing
    from a wheel while an editable install still finds it."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {n for n, m in MODS.items() if m.path.name == "__init__.py"}
    data = set(tool.get("package-data", {}))  # packages of data files only (the shipped recipes)
    assert set(tool["packages"]) - data == folders
    for name in data:
        folder = ROOT / tool["package-dir"][name]
        assert all(any(folder.glob(pattern)) for pattern in tool["package-data"][name]), name
    for name in tool["packages"]:
        top = ".".join(name.split(".")[:2])
        assert (ROOT / tool["package-dir"][top]).is_dir()


RECORD_MODULE = "slimformer.searcher.study.records"  # the one home of the user-attribute keys
_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def _own_nodes(scope: ast.AST):
    """The nodes of a module or function, not those of the functions nested in it."""
    stack = list(ast.iter_child_nodes(scope))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, _FUNCTIONS):
            stack.extend(ast.iter_child_nodes(node))


def _raw_attribute_keys(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, key) of each string key used with a trial's or a study's user attributes:
    `x.user_attrs["k"]`, `x.user_attrs.get("k")`, `"k" in x.user_attrs`, `set_user_attr("k", v)`,
    `set_trial_user_attr(id, "k", v)`, `user_attrs={"k": v}`, and the first three through a name bound
    to `x.user_attrs` (or `dict(x.user_attrs)`) in the same function. Other dicts' keys are not read."""
    def is_attrs(node) -> bool:
        if isinstance(node, ast.Attribute) and node.attr == "user_attrs":
            return True
        return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict"
                and len(node.args) == 1 and is_attrs(node.args[0]))

    def text(node) -> str | None:
        return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None

    found = []
    for scope in [tree, *(n for n in ast.walk(tree) if isinstance(n, _FUNCTIONS))]:
        nodes = list(_own_nodes(scope))
        names = {t.id for n in nodes if isinstance(n, ast.Assign) and is_attrs(n.value)
                 for t in n.targets if isinstance(t, ast.Name)}

        def attrs(node, names=names) -> bool:
            return is_attrs(node) or (isinstance(node, ast.Name) and node.id in names)

        for n in nodes:
            keys = []
            if isinstance(n, ast.Subscript) and attrs(n.value):
                keys = [text(n.slice)]
            elif isinstance(n, ast.Compare) and isinstance(n.ops[0], (ast.In, ast.NotIn)) and attrs(n.comparators[0]):
                keys = [text(n.left)]
            elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute):
                if n.func.attr in ("get", "pop", "setdefault") and attrs(n.func.value) and n.args:
                    keys = [text(n.args[0])]
                elif n.func.attr == "set_user_attr" and n.args:
                    keys = [text(n.args[0])]
                elif n.func.attr == "set_trial_user_attr" and len(n.args) > 1:
                    keys = [text(n.args[1])]
            if isinstance(n, ast.Call):
                keys += [text(k) for kw in n.keywords if kw.arg == "user_attrs" and isinstance(kw.value, ast.Dict)
                         for k in kw.value.keys if k is not None]
            found += [(n.lineno, k) for k in keys if k is not None]
    return sorted(found)


def test_the_attribute_key_reader_sees_every_form():
    src = '''
def f(trial, study, row):
    a = trial.user_attrs
    b = dict(study.user_attrs)
    x = (trial.user_attrs["plan"], trial.user_attrs.get("runtime"), "baseline" in study.user_attrs, a["quality"],
         b.get("metric"), row["latency_ms"], {"speedup": 1}["speedup"])
    trial.set_user_attr("seeded", True)
    study._storage.set_trial_user_attr(1, "retried", True)
    study.enqueue_trial({}, user_attrs={"host": 1})
    return lambda t: t.user_attrs.get("size_mb")

def g(a):
    return a["quality"]  # another function's `a`: not the attributes
'''
    keys = [k for _, k in _raw_attribute_keys(ast.parse(src))]
    assert sorted(keys) == sorted(["plan", "runtime", "baseline", "quality", "metric", "seeded", "retried", "host",
                                   "size_mb"])


def test_user_attribute_keys_live_in_the_record_module():
    """A trial's and a study's user attributes are read and written through the typed records of
    searcher/study/records.py (TrialRecord, StudyRecord, FinalRecord, Retiming and its key constants):
    no raw key string elsewhere in the searcher."""
    bad = [f"{m.path.relative_to(ROOT)}:{line} user attribute {key!r}" for n, m in MODS.items()
           if n.startswith("slimformer.searcher") and n != RECORD_MODULE for line, key in _raw_attribute_keys(m.tree)]
    assert not bad, "\n".join(bad)


BENCHMARKS = ROOT / "benchmarks"  # a package run as modules (`python -m benchmarks.NAME`), not installed


def _benchmark_breaches(tree: ast.Module, test_modules: set[str]) -> list[tuple[int, str]]:
    """(line, what) for each way a benchmark module reaches outside the package's rules: `sys.path`
    touched in any way, `site.addsitedir`, an import of a module of tests/ (`tests.x`, or a bare
    `conftest`/`pgserver` found through an edited path), another module's underscore name."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name) \
                and node.value.id == "sys":
            found.append((node.lineno, "uses sys.path"))
        elif isinstance(node, ast.Attribute) and node.attr == "addsitedir":
            found.append((node.lineno, "uses site.addsitedir"))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [] if node.level else [node.module or ""]
            for name in names:
                top = name.split(".")[0]
                if top == "tests" or top in test_modules:
                    found.append((node.lineno, f"imports {name} from tests/"))
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("benchmarks")):
                found += [(node.lineno, f"imports the underscore name {a.name}") for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_the_benchmark_reader_sees_every_breach():
    src = '''
import sys, site
sys.path.insert(0, "tests/searcher")
sys.path += ["x"]
site.addsitedir("y")
from conftest import build_tiny_model
import tests.searcher.pgserver
from benchmarks.common import _private, write_md
from .selection import _rank
import os.path
from benchmarks.common import RESULTS
'''
    whats = [w for _, w in _benchmark_breaches(ast.parse(src), {"conftest", "pgserver"})]
    assert sorted(whats) == sorted(["uses sys.path", "uses sys.path", "uses site.addsitedir",
                                    "imports conftest from tests/", "imports tests.searcher.pgserver from tests/",
                                    "imports the underscore name _private", "imports the underscore name _rank"])


def test_benchmarks_edit_no_path_and_import_nothing_from_tests():
    """benchmarks/ is a package run as modules from the repository root: no script edits sys.path or
    imports a module of tests/ (what a benchmark shares with the tests lives in
    slimformer.searcher.testing, which both import), and scripts use each other's public names only."""
    test_modules = {f.stem for f in (ROOT / "tests").rglob("*.py")}
    files = sorted(BENCHMARKS.rglob("*.py"))
    assert BENCHMARKS / "__init__.py" in files and BENCHMARKS / "common.py" in files
    bad = [f"{f.relative_to(ROOT)}:{line} {what}" for f in files
           for line, what in _benchmark_breaches(ast.parse(f.read_text(), str(f)), test_modules)]
    assert not bad, "\n".join(bad)


def test_benchmark_results_live_in_results():
    """Every results file (`*_results*.md`/`.json`) is under benchmarks/results/, where the scripts write."""
    results = BENCHMARKS / "results"
    stray = sorted(str(f.relative_to(ROOT)) for f in BENCHMARKS.rglob("*_results*")
                   if f.suffix in (".md", ".json") and results not in f.parents)
    assert not stray, "results files outside benchmarks/results/:\n" + "\n".join(stray)
    assert any(results.glob("*_results*.md"))
