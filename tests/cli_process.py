"""The `video-generator` command as a user runs it: a process of its own, with a clean environment."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

from tests.conftest import REPO

UNKNOWN_REVISION = "0ddba11c0ffe"  # no Prefect migration has this id: a newer Prefect's, as far as ours knows


def run_cli(
    *args: str, home: Path, data_dir: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*args),
        capture_output=True,
        text=True,
        cwd=REPO,
        env=clean_env(home, data_dir, env),
        timeout=timeout,
    )


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "commands.cli", *args]


def clean_env(home: Path, data_dir: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """No PREFECT_*, VIDEO_GENERATOR_*, REPLICATE_* or SUPABASE_* from the test run: only `env`."""
    home.mkdir(parents=True, exist_ok=True)
    clean = {"PATH": os.environ["PATH"], "HOME": str(home), "VIDEO_GENERATOR_DATA_DIR": str(data_dir)}
    return clean | (env or {})


def newer_prefect_database(path: Path, revision: str = UNKNOWN_REVISION) -> Path:
    """A SQLite file as a newer Prefect leaves it, as far as ours can tell: migrated to `revision`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
        db.execute("INSERT INTO alembic_version VALUES (?)", (revision,))
    return path


def alembic_revision(path: Path) -> str:
    with closing(sqlite3.connect(path)) as db:
        (revision,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
    return str(revision)


def closed_port() -> int:
    """A port nothing listens on (it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
