"""A throwaway PostgreSQL server for benchmarks.scale_out: `initdb` in a temporary folder, a Unix
socket only (no TCP), trust authentication, removed on stop. A copy of tests/searcher/pgserver.py
(benchmarks import nothing from tests/); a fix there belongs here too.

PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user that
Debian's package creates (`runuser -u postgres`). `.ci/run` installs the package
(`apt-get install postgresql`); without it, `find_bindir()` returns None and scale_out records
its PostgreSQL run as skipped, with `unavailable_reason()`.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

__all__ = ["find_bindir", "PostgresServer", "unavailable_reason"]


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
    """Why no server can be started here (None when one can)."""
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
    """Start with `start()`, stop with `stop()` (or use it as a context manager)."""

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
