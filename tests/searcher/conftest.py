"""A tiny BERT (random weights, MiniLM's tokenizer) and a study around it, so search,
resume and CLI tests run in seconds (built by slimformer.searcher.testing, which the benchmarks
share), and the fixtures around them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from slimformer.searcher.testing import STUDIES, build_tiny_model, write_study  # noqa: F401 (STUDIES: for the test files)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """No device profile from the developer's ~/.cache leaks into a test (CLI subprocesses
    inherit the variable); a test that wants one writes it there itself."""
    monkeypatch.setenv("SLIMFORMER_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def one_thread():
    """torch on one thread for the test, the previous count restored after."""
    from slimformer.searcher.devices.latency import fixed_threads

    with fixed_threads(1):
        yield


def copy_tokenizer(model_dir: Path, out: Path) -> None:
    """The tokenizer files of `model_dir` (the tiny BERT's: MiniLM's) into another model folder."""
    for f in model_dir.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "special_tokens")):
            shutil.copy(f, out / f.name)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-bert"))


def run_cli(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "slimformer.searcher.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=timeout)


def assert_user_error(res, *fragments):
    """Exit 2, one clear line naming every fragment, no traceback."""
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert "error" in lines[-1]
    for f in fragments:
        assert f in lines[-1], (f, lines[-1])


def start_search(path, *extra, hang=None):
    """Start `slimformer search` in the background. With `hang`, that trial number hangs
    (SLIMFORMER_FAULT, in whichever process evaluates it) until the process is killed or
    interrupted, so a test stops the search at a known trial instead of racing one."""
    import os

    env = {**os.environ, "SLIMFORMER_FAULT": f"hang:{hang}"} if hang is not None else None
    return subprocess.Popen([sys.executable, "-m", "slimformer.searcher.cli", "search", str(path), *map(str, extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def start():
    return start_search


@pytest.fixture
def expect_user_error():
    return assert_user_error


@pytest.fixture
def make_study(tmp_path, tiny_model_dir):
    return lambda **overrides: write_study(tmp_path, tiny_model_dir, **overrides)


@pytest.fixture(scope="session")
def _postgres_server(requires):
    """One throwaway PostgreSQL server for the session (slimformer.searcher.testing), or None when
    SLIMFORMER_TEST_POSTGRES_URL names an existing one."""
    import os

    from slimformer.searcher.testing import PostgresServer, unavailable_reason

    if os.environ.get("SLIMFORMER_TEST_POSTGRES_URL"):
        yield None
        return
    reason = unavailable_reason()
    requires(reason is None, reason)
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_url(_postgres_server, request) -> str:
    """A PostgreSQL storage URL: a fresh database on the throwaway server, or
    $SLIMFORMER_TEST_POSTGRES_URL (tests then keep apart by study name)."""
    import os
    import re

    if _postgres_server is None:
        return os.environ["SLIMFORMER_TEST_POSTGRES_URL"]
    return _postgres_server.create_database(re.sub(r"\W", "_", request.node.name).lower()[:60])


@pytest.fixture(scope="session")
def study_writer(tiny_model_dir):
    """write_study for any folder (for module-scoped fixtures that run a search once)."""
    return lambda folder, **overrides: write_study(Path(folder), tiny_model_dir, **overrides)


def run_in_process(*args):
    """`slimformer ARGS` through the CLI's main() in this process (no interpreter start-up or
    imports to pay again); the result looks like run_cli's (returncode, stdout, stderr). The
    torch thread count a study sets is put back afterwards."""
    import contextlib
    import io

    from slimformer.searcher.cli import main
    from slimformer.searcher.devices.latency import fixed_threads

    out, err = io.StringIO(), io.StringIO()
    with fixed_threads(None), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse's own errors and --help
            code = exc.code
    return subprocess.CompletedProcess(["slimformer", *map(str, args)], code, out.getvalue(), err.getvalue())
