"""A throwaway PostgreSQL cluster for tests: its own directory, a free port on 127.0.0.1, gone on exit.

The server refuses to run as root, so when the tests run as root, initdb and postgres run as the
`postgres` system user in a directory that user owns. Two test sessions can run at once: each cluster
has its own directory, unix socket and port.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from tests.stack.service import Launch, ServiceProcess, clean_env, free_port

PG_MAJOR = "15"
# Supabase's image bootstraps with supabase_admin as the superuser; `postgres` is a demoted role that
# supabase_roles.sql creates. Keeping the names means migrations run as the same role they do there.
SUPERUSER = "supabase_admin"
OS_USER = "postgres"

# Durability is worthless for a cluster that lives for one test session; these make it a lot faster.
_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "'32MB'",
    "max_connections": "50",
    # Supabase runs UTC; the host's zone would shift every timestamp a test pins.
    "timezone": "'UTC'",
    "log_timezone": "'UTC'",
    "log_min_messages": "warning",
}


class PsqlError(RuntimeError):
    """psql exited non-zero; the message carries its stderr."""


def find_pg_bindir() -> Path | None:
    """PostgreSQL's server binaries: $PG_BINDIR if set (and only there), else Debian's versioned
    directory, else wherever `initdb` is on the PATH."""
    if os.environ.get("PG_BINDIR"):
        candidates = [Path(os.environ["PG_BINDIR"])]
    else:
        candidates = [Path(f"/usr/lib/postgresql/{PG_MAJOR}/bin")]
        on_path = shutil.which("initdb")
        if on_path:
            candidates.append(Path(on_path).resolve().parent)
    for bindir in candidates:
        if all((bindir / name).is_file() for name in ("initdb", "postgres", "pg_isready", "psql")):
            return bindir
    return None


class PostgresCluster:
    """initdb + postgres on a free port, stopped (fast shutdown) and deleted on exit.

    Local (unix socket) connections are trusted: that is how `psql()` talks to it. TCP connections on
    127.0.0.1 need a password (scram-sha-256), so PostgREST's `authenticator` logs in as it would on
    Supabase; `password` is the superuser's, and the one supabase_roles.sql gives its login roles.
    """

    def __init__(self, bindir: Path | None = None, *, startup_timeout: float = 30.0) -> None:
        found = bindir or find_pg_bindir()
        if found is None:
            raise FileNotFoundError(f"PostgreSQL {PG_MAJOR} server binaries not found (set PG_BINDIR)")
        self.bindir = found
        self.startup_timeout = startup_timeout
        self.host = "127.0.0.1"
        self.port = 0
        self.password = secrets.token_hex(16)
        self.superuser = SUPERUSER
        # SIGINT is a fast shutdown (what `pg_ctl stop -m fast` sends), and the postmaster takes its backends
        # down with it; then immediate, then SIGKILL, so a stuck server cannot hang the test session.
        self._service = ServiceProcess(
            "postgres",
            prefix="pg-stack-",
            port_taken=("could not bind", "already in use"),
            startup_timeout=startup_timeout,
            die_signal=signal.SIGINT,
            stop_signals=((signal.SIGINT, 30.0), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)),
        )

    @property
    def root(self) -> Path:
        return self._service.root

    @property
    def socket_dir(self) -> Path:
        return self.root

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self._service.log_file

    def dsn(self, user: str | None = None, db: str = "postgres") -> str:
        """A TCP connection URI, e.g. for asyncpg. Every login role shares `password`."""
        return f"postgresql://{user or self.superuser}:{self.password}@{self.host}:{self.port}/{db}"

    def psql(
        self,
        sql: str | None = None,
        *,
        file: Path | None = None,
        user: str | None = None,
        db: str = "postgres",
        variables: Mapping[str, str] | None = None,
    ) -> str:
        """Run SQL text or a file through psql, stopping at the first error. Returns stdout with
        unaligned, tuples-only output, so `psql("select 1")` is "1"."""
        if (sql is None) == (file is None):
            raise ValueError("pass exactly one of sql or file")
        command = [
            str(self.bindir / "psql"),
            "--no-psqlrc",
            "--quiet",
            "--no-align",
            "--tuples-only",
            "--set=ON_ERROR_STOP=1",
            f"--host={self.socket_dir}",
            f"--port={self.port}",
            f"--username={user or self.superuser}",
            f"--dbname={db}",
        ]
        command += [f"--set={name}={value}" for name, value in (variables or {}).items()]
        command += ["--file", str(file) if file is not None else "-"]
        result = subprocess.run(command, input=sql, capture_output=True, text=True, env=clean_env())
        if result.returncode != 0:
            source = file if file is not None else "SQL"
            raise PsqlError(f"psql failed on {source} (exit {result.returncode}):\n{result.stderr}")
        return result.stdout.strip()

    def __enter__(self) -> Self:
        self._service.open(self._launch, self._is_ready, prepare=self._initdb)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the server and delete its directory. Safe to call twice."""
        self._service.stop()

    def _as_server_user(self) -> dict[str, Any]:
        """Popen arguments that run the server binaries as `postgres` when we are root."""
        if os.geteuid() != 0:
            return {}
        account = pwd.getpwnam(OS_USER)
        return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    def _give_to_server_user(self, path: Path) -> None:
        """The server user must own its directory and the files it writes or reads."""
        if os.geteuid() == 0:
            account = pwd.getpwnam(OS_USER)
            os.chown(path, account.pw_uid, account.pw_gid)

    def _server_run(self, command: list[str]) -> None:
        result = subprocess.run(
            command,
            cwd=self.root,
            capture_output=True,
            text=True,
            env=clean_env(),
            **self._as_server_user(),
        )
        if result.returncode != 0:
            raise RuntimeError(f"{command[0]} failed (exit {result.returncode}):\n{result.stderr}")

    def _initdb(self) -> None:
        self._give_to_server_user(self.root)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        self._give_to_server_user(pwfile)
        self._server_run(
            [
                str(self.bindir / "initdb"),
                f"--pgdata={self.data_dir}",
                f"--username={self.superuser}",
                f"--pwfile={pwfile}",
                "--encoding=UTF8",
                # C: fast, identical everywhere, and no dependency on the host's generated locales.
                "--locale=C",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
                "--no-instructions",
            ]
        )
        pwfile.unlink()
        settings = "".join(f"{name} = {value}\n" for name, value in _SETTINGS.items())
        settings += f"unix_socket_directories = '{self.socket_dir}'\n"
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# tests/stack/postgres.py\n" + settings)

    def _launch(self) -> Launch:
        # free_port() can race with another session; the loser sees "could not bind" and tries another.
        self.port = free_port()
        self.log_file.write_bytes(b"")
        self._give_to_server_user(self.log_file)
        command = [str(self.bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        return Launch(command, env=clean_env(), popen=self._as_server_user())

    def _is_ready(self) -> bool:
        ready = [
            str(self.bindir / "pg_isready"),
            "--quiet",
            f"--host={self.socket_dir}",
            f"--port={self.port}",
            f"--username={self.superuser}",
            "--dbname=postgres",
        ]
        return subprocess.run(ready, env=clean_env()).returncode == 0
