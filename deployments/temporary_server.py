"""The CLI's temporary Prefect server: its state kept with the project's data, a start-up timeout that
holds on a busy machine, its output in a log, and a message (not a wait) when it cannot start.

Without an API URL Prefect would start a temporary ("ephemeral") server on first use, keeping its SQLite
database in ~/.prefect, shared with every other Prefect on the machine: a database that a newer Prefect
migrated stops it ("Can't locate revision ..."), and an older one would be migrated by it, out from under
the Prefect that made it. Its start-up timeout (20 s) does not hold on a busy 2-core machine, its output
(a failed start is a 500-line traceback) goes to the terminal, and a server that exits is waited for
until the timeout. So the CLI runs Prefect's server app itself, as Prefect runs its temporary server
(prefect/server/api/server.py, SubprocessASGIServer), with PREFECT_HOME under VIDEO_GENERATOR_DATA_DIR,
and points PREFECT_API_URL at it for this process.
"""

from __future__ import annotations

import atexit
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from clipgen.errors import OperationalError, PrefectDatabaseTooNew, PrefectUnavailable

STARTUP_TIMEOUT_S = 240
"""Measured on this project's 2-core machine, with other test suites running beside it (load 4): 9-15 s
once the database exists, 23-30 s for a first start (it creates the database); with two busy loops on top
(load 6-10): 24-36 s, and 63-108 s for a first start. About twice the worst of those. A server that exits
is reported at once, so the timeout only bounds a server that hangs."""
POLL_S = 0.2
PORT_ATTEMPTS = 3  # another process may take the port between our pick and the server's bind
SERVER_LOG = "server.log"
_UNKNOWN_REVISION = re.compile(r"Can't locate revision identified by '([^']+)'")
_PORT_IN_USE = "address already in use"


@dataclass
class TemporaryServer:
    """Prefect's server app in a process of its own, for the life of this command."""

    home: Path  # PREFECT_HOME: its database (prefect.db) and its log
    timeout_s: int
    url: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log(self) -> Path:
        return self.home / SERVER_LOG

    @property
    def database(self) -> Path:
        return self.home / "prefect.db"

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def temporary_server(data_dir: Path) -> TemporaryServer | None:
    """Call before any flow runs. None when Prefect has a server to use: PREFECT_API_URL in the
    environment, in the active Prefect profile or in a prefect.toml, or set by the caller's settings
    context (tests). Otherwise the temporary server to start: its home under `data_dir` (unless
    PREFECT_HOME is set), STARTUP_TIMEOUT_S (unless PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS is)."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url:
        return None
    if "PREFECT_HOME" not in os.environ:
        os.environ["PREFECT_HOME"] = str((data_dir / "prefect").resolve())
        # The user's profiles stay where they are and still apply (none of them names a server).
        os.environ.setdefault("PREFECT_PROFILES_PATH", str(settings.profiles_path))
    ephemeral = settings.server.ephemeral
    explicit = "startup_timeout_seconds" in ephemeral.model_fields_set
    return TemporaryServer(
        Path(os.environ["PREFECT_HOME"]).expanduser(),
        ephemeral.startup_timeout_seconds if explicit else STARTUP_TIMEOUT_S,
    )


def start(server: TemporaryServer) -> None:
    """Start the server and point this process's Prefect settings at it. PrefectUnavailable or
    PrefectDatabaseTooNew when it does not answer in time or exits."""
    from prefect.context import refresh_global_settings_context

    server.home.mkdir(parents=True, exist_ok=True)
    atexit.register(server.stop)
    for attempt in range(1, PORT_ATTEMPTS + 1):
        port = _free_port()
        server.process = _spawn(port, server.log)
        server.url = f"http://127.0.0.1:{port}/api"
        if _answers(server):
            break
        log = _read(server.log)
        if server.process.poll() is not None and _PORT_IN_USE in log and attempt < PORT_ATTEMPTS:
            continue
        code = server.process.poll()
        server.stop()
        error = _not_started(server, code, log)
        error.add_note(f"The server's log, {server.log}:\n{log}")  # --verbose prints it with the traceback
        raise error
    os.environ["PREFECT_API_URL"] = server.url
    refresh_global_settings_context()  # Prefect read its settings when it was imported


def _spawn(port: int, log: Path) -> subprocess.Popen[bytes]:
    """Prefect's server app under uvicorn, as Prefect starts its temporary server: no UI, the services a
    temporary server runs, its output (errors only) in `log`, emptied first."""
    import prefect

    with log.open("wb") as output:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--app-dir",
                str(prefect.__module_path__.parent),
                "--factory",
                "prefect.server.api.server:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "error",
                "--lifespan",
                "on",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=os.environ
            | {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"},
        )


def _answers(server: TemporaryServer) -> bool:
    """Wait until the server answers its health check (True), or exits or times out (False)."""
    assert server.process is not None
    deadline = time.monotonic() + server.timeout_s
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline and server.process.poll() is None:
            try:
                if client.get(f"{server.url}/health").status_code == 200:
                    return True
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(POLL_S)
    return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _not_started(server: TemporaryServer, code: int | None, log: str) -> OperationalError:
    if match := _UNKNOWN_REVISION.search(log):
        return _database_too_new(server, match.group(1))
    instead = (
        "or start a Prefect server once (`prefect server start`) and set "
        "PREFECT_API_URL=http://127.0.0.1:4200/api to use it instead"
    )
    if code is None:
        return PrefectUnavailable(
            f"Prefect's temporary server did not answer within {server.timeout_s} s.",
            cause="the machine is busy: the server takes about 10 s to start on two idle cores, and a "
            "first start also creates its database",
            remedy="run the command again, allow longer with "
            f"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS (now {server.timeout_s}), {instead}.",
        )
    last = next((line.strip() for line in reversed(log.splitlines()) if line.strip()), "(empty)")
    return PrefectUnavailable(
        f"Prefect's temporary server exited with code {code} while starting.",
        cause=f"its log ends with: {last}",
        remedy=f"read {server.log}; {instead}.",
    )


def _database_too_new(server: TemporaryServer, revision: str) -> PrefectDatabaseTooNew:
    from prefect import __version__

    return PrefectDatabaseTooNew(
        f"Prefect's temporary server cannot use its database {server.database}: it was migrated to "
        f"revision {revision}, which Prefect {__version__} does not know.",
        cause="a newer Prefect used this database (PREFECT_HOME or VIDEO_GENERATOR_DATA_DIR shared with "
        "another install); this Prefect cannot read it, and does not migrate it",
        remedy=f"move {server.database} aside (it holds only the history of the temporary server's runs; "
        "clips and records are in the store), use another VIDEO_GENERATOR_DATA_DIR, or set "
        "PREFECT_API_URL to a running Prefect server.",
    )


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
