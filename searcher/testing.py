"""What the tests and the benchmarks share (one home: tests/ and benchmarks/ both import it): the
tests' tiny model and a study around it, and a throwaway PostgreSQL server.

- `build_tiny_model`: a tiny BERT (4 layers, hidden 64, random weights from seed 0) with MiniLM's
  tokenizer, so searches, resumes and CLI runs take seconds.
- `write_study`: a study file on that model with the quickstart's data (STUDIES/data: a source
  checkout's studies/ folder, which the tests and the benchmarks run from).
- `PostgresServer`: `initdb` in a temporary folder, a Unix socket only (no TCP), trust
  authentication, removed on stop. PostgreSQL refuses to run as root, so as root the server runs as
  the `postgres` user that Debian's package creates (`runuser -u postgres`). `.ci/run` installs the
  package (`apt-get install postgresql`); without it `find_bindir()` returns None, and
  `unavailable_reason()` says why: the tests skip on a developer's machine (they fail in CI: the
  `requires` fixture in tests/conftest.py) and benchmarks.scale_out records its PostgreSQL run as
  skipped.

Imports: problem.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

__all__ = ["STUDIES", "build_tiny_model", "write_study", "find_bindir", "PostgresServer", "unavailable_reason"]

STUDIES = Path(__file__).resolve().parents[1] / "studies"  # a source checkout's studies/ folder


def build_tiny_model(out: Path) -> Path:
    """The tiny BERT (4 layers, hidden 64, random weights from seed 0) with MiniLM's tokenizer, saved in `out`."""
    import torch
    import transformers as T

    from .problem.models import load_tokenizer

    torch.manual_seed(0)
    cfg = T.BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                       intermediate_size=256, max_position_embeddings=256)
    T.BertModel(cfg).save_pretrained(out)
    load_tokenizer("minilm-l6").save_pretrained(out)
    return out


def write_study(folder: Path, model_dir: Path, **overrides) -> Path:
    """`folder`/study.yaml on `model_dir` with the quickstart's data (copied into `folder`/data);
    sections merged from overrides (a dict into a dict section, anything else replaces it)."""
    import yaml

    data_dir = folder / "data"
    if not data_dir.exists():
        shutil.copytree(STUDIES / "data", data_dir)
    study = {
        "model": str(model_dir),
        "task": "sentence-similarity",
        "data": {"format": "tsv", "header": False,
                 "names": ["genre", "file", "year", "id", "score", "sentence1", "sentence2"],
                 "validation": "data/sts-dev.tsv", "validation_size": 64,
                 "calibration": "data/sts-train-1k.tsv", "calibration_size": 32},
        "device": {"threads": 1, "seq_len": 32, "rounds": 4, "warmup": 1},
        "space": {"heads": {"choices": [1, 2, 4]}, "ffn": {"choices": [64, 128, 256]}, "depth": {"min": 2}},
        "search": {"trials": 4, "seed": 0, "sampler": "random"},
    }
    for section, value in overrides.items():
        if isinstance(value, dict) and isinstance(study.get(section), dict):
            study[section] = {**study[section], **value}
        else:
            study[section] = value
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def find_bindir() -> Path | None:
    """The folder holding initdb/pg_ctl: $PG_BINDIR, Debian's /usr/lib/postgresql/N/bin, or PATH."""
    candidates = [os.environ.get("PG_BINDIR", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    which = shutil.which("initdb")
    candidates.append(str(Path(which).parent) if which else "")
    for c in candidates:
        if c and (Path(c) / "initdb").is_file() and (Path(c) / "pg_ctl").is_file():
            return Path(c)
    return None


def unavailable_reason() -> str | None:
    """Why no PostgreSQL server can be started here (None when one can)."""
    if find_bindir() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the psycopg driver is not installed: pip install 'slimformer[postgres]'"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """A throwaway PostgreSQL server: start with `start()`, stop with `stop()` (or use it as a context manager)."""

    def __init__(self):
        self.bindir = find_bindir()
        self.folder = Path(tempfile.mkdtemp(prefix="slimformer-pg-"))
        self.data = self.folder / "data"
        self.port = _free_port()

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)

    def start(self) -> PostgresServer:
        if os.geteuid() == 0:
            shutil.chown(self.folder, user="postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        opts = f"-k {self.folder} -p {self.port} -c listen_addresses='' -c fsync=off -c max_connections=100"
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.folder / "server.log"), "-w", "start")
        return self

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL for the psycopg 3 driver over the server's Unix socket."""
        return f"postgresql+psycopg://postgres@/{database}?host={self.folder}&port={self.port}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(host=str(self.folder), port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        try:
            if self.data.is_dir():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except subprocess.CalledProcessError:
            pass
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False
