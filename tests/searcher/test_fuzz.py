"""Property-based fuzzing of everything a user hands to slimformer: study files (random
structures, mutations of a valid study, raw YAML text), plans and CLI arguments. Every input
either works or is refused with one clear line (UserError / ValueError / exit 2); never an
unexpected exception (a traceback), never a storage file written.

Examples per property: $SLIMFORMER_FUZZ_EXAMPLES (default 40); the reliability benchmark runs
more and reads the counts from $SLIMFORMER_FUZZ_COUNT_FILE."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from collections import Counter

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slimformer.methods import Plan
from slimformer.searcher.cli import build_parser, main
from slimformer.searcher.config import StudyConfig, load_study_config
from slimformer.searcher.errors import UserError

EXAMPLES = int(os.environ.get("SLIMFORMER_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
COUNTS: Counter = Counter()
TRACEBACKS = [0]

BASE = {
    "model": "some/model-dir", "task": "sentence-similarity",
    "data": {"format": "tsv", "header": False, "names": ["a", "score", "sentence1", "sentence2"],
             "validation": "data/dev.tsv", "validation_size": 64, "calibration": "data/train.tsv"},
    "device": {"threads": 1, "seq_len": 32, "rounds": 4, "warmup": 1},
    "budget": {"speedup": 2.0, "max_quality_drop": 1.0},
    "space": {"heads": {"choices": [1, 2, 4]}, "ffn": {"choices": [64, 128]}, "depth": {"min": 2}},
    "search": {"trials": 4, "seed": 0, "sampler": "random", "isolate": "auto", "trial_timeout": 30},
}
SECTIONS = [name for name in StudyConfig.model_fields if name != "path"]

scalars = (st.none() | st.booleans() | st.integers(-10**9, 10**9) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=12) | st.sampled_from(["auto", "tpe", "eager", "speedup", "-1", "1e400", ""]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=8) | st.sampled_from(["choices", "min", "max", "per_layer", "speedup"]), inner, max_size=4),
    max_leaves=12)


@pytest.fixture(scope="module", autouse=True)
def _write_counts():
    yield
    path = os.environ.get("SLIMFORMER_FUZZ_COUNT_FILE")
    if path:
        with open(path, "w") as f:
            json.dump({"inputs": dict(COUNTS), "tracebacks": TRACEBACKS[0]}, f)


@contextlib.contextmanager
def _no_traceback(name: str, *expected: type[BaseException]):
    """The body may succeed or raise one of `expected`; anything else is a traceback."""
    COUNTS[name] += 1
    try:
        yield
    except expected as exc:
        assert str(exc).strip(), f"{type(exc).__name__} without a message"  # a clear line, never empty
    except BaseException:
        TRACEBACKS[0] += 1
        raise


@st.composite
def mutated_study(draw):
    study = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "drop", "section", "drop_section", "unknown"]))
        section = draw(st.sampled_from(SECTIONS))
        if op == "section":
            study[section] = draw(values)
        elif op == "drop_section":
            study.pop(section, None)
        elif op == "unknown":
            study[draw(st.text(min_size=1, max_size=8))] = draw(values)
        elif isinstance(study.get(section), dict):
            keys = list(study[section]) or ["x"]
            key = draw(st.sampled_from(keys) | st.text(min_size=1, max_size=8))
            if op == "set":
                study[section][key] = draw(values)
            else:
                study[section].pop(key, None)
    return study


@FUZZ
@given(study=mutated_study() | st.dictionaries(st.sampled_from(SECTIONS) | st.text(max_size=6), values, max_size=5)
       | values)
def test_study_structures(study):
    with _no_traceback("study structure (load_study_config)", UserError):
        cfg = load_study_config(data=study) if isinstance(study, dict) else _load_text(yaml.safe_dump(study))
        assert isinstance(cfg, StudyConfig)  # accepted input gives a validated study


def _load_text(text: str):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "study.yaml")
        with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
            f.write(text)
        try:
            return load_study_config(path)
        finally:
            assert sorted(os.listdir(d)) == ["study.yaml"]  # validation writes nothing


YAML_BITS = st.sampled_from([":", "-", "[", "]", "{", "}", "!", "&a", "*a", "#", "\n", "  ", "'", '"', "%", "@", "|",
                             ">", "!!python/object/apply:os.system ['echo pwned']", "!!binary", "? ", ",", "\t", "~"])


@st.composite
def mutated_yaml(draw):
    text = yaml.safe_dump(draw(mutated_study()), sort_keys=False)
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(text)))
        if draw(st.booleans()):
            text = text[:pos] + draw(YAML_BITS | st.text(max_size=4)) + text[pos:]
        else:
            text = text[:pos] + text[pos + draw(st.integers(1, 8)):]
    return text


@FUZZ
@given(text=mutated_yaml() | st.text(max_size=200))
def test_study_yaml_text(text):
    with _no_traceback("study YAML text (file)", UserError):
        assert isinstance(_load_text(text), StudyConfig)  # accepted input gives a validated study


PLAN_KEYS = ["layers", "heads", "ffn", "importance", "rank", "bits", "recovery", "distill", "group_size"]
plan_values = (values | st.lists(st.integers(-2, 600), max_size=6) | st.integers(-5, 600)
               | st.sampled_from(["magnitude", "fisher", "none", "mask_tuning"]))


@FUZZ
@given(plan=st.dictionaries(st.sampled_from(PLAN_KEYS) | st.text(max_size=6), plan_values, max_size=5)
       | st.dictionaries(st.just("distill"), st.dictionaries(
           st.sampled_from(["steps", "temperature", "alpha", "losses", "lr", "x"]), plan_values, max_size=4)))
def test_plans(plan):
    with _no_traceback("plan (Plan.from_dict)", ValueError):
        p = Plan.from_dict(plan)
        assert Plan.from_dict(p.to_dict()) == p  # what is accepted round-trips
    with _no_traceback("plan text (Plan.from_yaml)", ValueError):
        Plan.from_yaml(yaml.safe_dump(plan) + ("" if plan else "["))


TOKENS = st.sampled_from([
    "search", "report", "export", "compress", "evaluate", "profile", "predict", "--trials", "--timeout", "--storage",
    "--study-name", "--backend", "--workers", "--seed", "--json", "--all", "--html", "--best", "--trial", "--out",
    "--force", "--model", "--plan", "--data", "--rounds", "--threads", "--runtime", "--quick", "--seq-len",
    "--no-rescore", "-h", "ray", "local", "0", "-1", "3", "1e9", "nan", "x.yaml", "", "--", "-", "=",
]) | st.text(max_size=8)


@FUZZ
@given(argv=st.lists(TOKENS, max_size=8))
def test_cli_arguments(argv):
    """The parser accepts or refuses (exit 2, one line); --help exits 0; never a traceback."""
    out, err = io.StringIO(), io.StringIO()
    with _no_traceback("CLI argv (parser)"), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            build_parser().parse_args(argv)
        except SystemExit as exc:
            assert exc.code in (0, 2), (argv, exc.code, err.getvalue())
            if exc.code == 2:
                assert "error:" in err.getvalue().strip().splitlines()[-1]


@FUZZ
@given(text=mutated_yaml(), command=st.sampled_from(["search", "report", "export"]))
def test_cli_on_fuzzed_study_files(tmp_path, text, command):
    """The whole CLI on a fuzzed study file, with a storage that is missing: exit 2 with one
    line (bad file, or no storage), no traceback, and no storage file created."""
    folder = tmp_path / f"f{COUNTS['CLI on fuzzed study files']}"
    folder.mkdir()
    study = folder / "study.yaml"
    study.write_text(text, encoding="utf-8", errors="surrogatepass")
    storage = f"sqlite:///{folder / 'missing' / 'x.db'}"
    extra = {"search": ["--trials", "1"], "report": ["--no-rescore"], "export": ["--best", "--out", str(folder / "o")]}
    err = io.StringIO()
    with _no_traceback("CLI on fuzzed study files"), contextlib.redirect_stderr(err), \
            contextlib.redirect_stdout(io.StringIO()):
        code = main([command, str(study), "--storage", storage, *extra[command]])
    assert code == 2, err.getvalue()
    assert "Traceback" not in err.getvalue() and "internal error" not in err.getvalue()
    assert sorted(p.name for p in folder.iterdir()) == ["study.yaml"]


def test_deeply_nested_inputs_are_clear_errors(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 5000)
    with pytest.raises(UserError, match="nested too deeply|malformed"):
        load_study_config(deep)
    with pytest.raises(ValueError, match="nested too deeply"):
        Plan.from_yaml("heads: " + "[" * 5000 + "]" * 5000)
    with pytest.raises(ValueError, match="nested too deeply"):
        Plan.from_json("[" * 100000 + "]" * 100000)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00model: x")
    with pytest.raises(UserError, match="UTF-8"):
        load_study_config(binary)
