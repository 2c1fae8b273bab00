"""How the CLI reaches Prefect: a temporary server that keeps its state with the project's data, and
Prefect's failures turned into our typed errors (clipgen/errors.py), each saying what to do.

Without an API URL Prefect starts a temporary ("ephemeral") server on first use. By default it keeps its
SQLite database in ~/.prefect, shared with every other Prefect on the machine: a database that a newer
Prefect migrated stops it ("Can't locate revision ..."), and an older one would be migrated by it, out
from under the Prefect that made it. So the CLI gives the server a home of its own under
VIDEO_GENERATOR_DATA_DIR and starts it before the flow runs: with a start-up timeout that holds on a busy
machine (Prefect's default, 20 s, does not), its output in a log file instead of on the terminal, and a
message instead of a wait when it exits early.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from clipgen.errors import (
    OperationalError,
    PrefectDatabaseTooNew,
    PrefectRefused,
    PrefectUnavailable,
)

if TYPE_CHECKING:
    from prefect.server.api.server import SubprocessASGIServer

STARTUP_TIMEOUT_S = 240
"""Measured on this project's 2-core machine (benchmarks are not tests): 10-13 s idle once the database
exists, 25-28 s for a first start (it creates the database) with the suite running beside it, and 63-108 s
for a first start with two busy loops on top (load 6 on 2 cores). Twice the worst of those, and failing
early when the server exits means a broken server is reported at once, not after the timeout."""
POLL_S = 0.2
SERVER_LOG = "server.log"
STARTUP_FAILED = "Application startup failed"  # uvicorn's words
_UNKNOWN_REVISION = re.compile(r"Can't locate revision identified by '([^']+)'")


@dataclass(frozen=True)
class TemporaryServer:
    """Prefect's temporary server as the CLI runs it."""

    home: Path  # PREFECT_HOME: its database (prefect.db) and its log
    timeout_s: int

    @property
    def log(self) -> Path:
        return self.home / SERVER_LOG

    @property
    def database(self) -> Path:
        return self.home / "prefect.db"


def temporary_server(data_dir: Path) -> TemporaryServer | None:
    """Call before any flow runs. None when Prefect has a server to use: PREFECT_API_URL in the
    environment, in the active Prefect profile or in a prefect.toml, or set by the caller's settings
    context (tests). Otherwise the temporary server gets its home under `data_dir` (unless PREFECT_HOME
    is set) and STARTUP_TIMEOUT_S (unless PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS is set)."""
    from prefect.context import refresh_global_settings_context
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url:
        return None
    if "PREFECT_HOME" not in os.environ:
        os.environ["PREFECT_HOME"] = str((data_dir / "prefect").resolve())
        # The user's profiles stay where they are and still apply (none of them names a server).
        os.environ.setdefault("PREFECT_PROFILES_PATH", str(settings.profiles_path))
    if "startup_timeout_seconds" not in settings.server.ephemeral.model_fields_set:
        os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = str(STARTUP_TIMEOUT_S)
    refresh_global_settings_context()  # Prefect read its settings when it was imported
    settings = get_current_settings()
    return TemporaryServer(settings.home, settings.server.ephemeral.startup_timeout_seconds)


def start(server: TemporaryServer) -> None:
    """Start the temporary server now, the one Prefect's clients use when no API URL is set, with its
    output in its log. PrefectUnavailable or PrefectDatabaseTooNew when it does not answer in time or
    exits."""
    from prefect.server.api.server import SubprocessASGIServer

    instance = SubprocessASGIServer()
    server.home.mkdir(parents=True, exist_ok=True)
    failures: list[Exception] = []

    def run() -> None:
        try:
            instance.start(timeout=server.timeout_s)
        except (RuntimeError, httpx.HTTPError) as exc:  # a timeout; reported below, with the server's log
            failures.append(exc)

    starter = threading.Thread(target=run, name="prefect-temporary-server", daemon=True)
    with _output_to(server.log):  # the server process inherits it for its whole life
        starter.start()
        while starter.is_alive() and not _failed(instance, server.log):
            starter.join(POLL_S)
    if not starter.is_alive() and not failures:
        return
    log = _read(server.log)
    error = _not_started(server, _exit_code(instance) if _failed(instance, server.log) else None, log)
    error.add_note(f"The server's log, {server.log}:\n{log}")  # --verbose prints it with the traceback
    raise error


def _failed(instance: SubprocessASGIServer, log: Path) -> bool:
    """The server process ended for good. Exit code 3 is uvicorn's for a failed start-up, which Prefect
    takes for a port in use: it starts the server again on another port, again and again until its
    timeout, so a start-up failure is read from the log."""
    code = _exit_code(instance)
    return code is not None and (code != 3 or STARTUP_FAILED in _read(log))


def _exit_code(instance: SubprocessASGIServer) -> int | None:
    process = instance.server_process
    return None if process is None else process.poll()


def _not_started(server: TemporaryServer, code: int | None, log: str) -> OperationalError:
    if match := _UNKNOWN_REVISION.search(log):
        return _database_too_new(server, match.group(1))
    retry = (
        "or start a Prefect server once (`prefect server start`) and set "
        "PREFECT_API_URL=http://127.0.0.1:4200/api to use it instead"
    )
    if code is None:
        return PrefectUnavailable(
            f"Prefect's temporary server did not answer within {server.timeout_s} s.",
            cause="the machine is busy: the server takes about 10 s to start on two idle cores, and a "
            "first start also creates its database",
            remedy="run the command again, allow longer with "
            f"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS (now {server.timeout_s}), {retry}.",
        )
    last = next((line for line in reversed(log.splitlines()) if line.strip()), "(empty)")
    return PrefectUnavailable(
        f"Prefect's temporary server exited with code {code} while starting.",
        cause=f"its log ends with: {last.strip()}",
        remedy=f"read {server.log}; {retry}.",
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


@contextlib.contextmanager
def prefect_errors_explained(server: TemporaryServer | None) -> Iterator[None]:
    """Prefect failing to answer or refusing a request, raised as PrefectUnavailable / PrefectRefused.
    Anything else goes through as it is: the flow's own failures come back as its state, not raised."""
    try:
        yield
    except Exception as exc:
        error = _explained(exc, server)
        if error is None:
            raise
        raise error from exc


def _explained(exc: BaseException, server: TemporaryServer | None) -> OperationalError | None:
    where = _api_description(server)
    for link in _chain(exc):
        if isinstance(link, httpx.HTTPStatusError):
            return _status_error(link, where)
        if isinstance(link, httpx.TransportError):
            return _unreachable(link, where, server)
    if isinstance(exc, ValueError) and "No Prefect API URL" in str(exc):
        return PrefectUnavailable(
            "Prefect has no API to use: PREFECT_API_URL is not set and the temporary server is off.",
            cause="the active Prefect profile sets PREFECT_SERVER_EPHEMERAL_ENABLED=false",
            remedy="set PREFECT_API_URL to a running Prefect server, or allow the temporary server "
            "(`prefect config unset PREFECT_SERVER_EPHEMERAL_ENABLED`).",
        )
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def _api_description(server: TemporaryServer | None) -> str:
    if server is not None:
        return f"the temporary Prefect server (state in {server.home})"
    from prefect.settings import get_current_settings

    return f"the Prefect API at {get_current_settings().api.url} (PREFECT_API_URL)"


def _unreachable(exc: httpx.TransportError, where: str, server: TemporaryServer | None) -> OperationalError:
    if server is not None:
        return PrefectUnavailable(
            f"{where} stopped answering ({type(exc).__name__}).",
            cause=f"the server process ended or is overloaded; its log is {server.log}",
            remedy="run the same job again (stored clips are reused), or use a Prefect server of your own "
            "(`prefect server start`, then PREFECT_API_URL=http://127.0.0.1:4200/api).",
        )
    return PrefectUnavailable(
        f"Nothing answers at {where}: {exc or type(exc).__name__}.",
        cause="no Prefect server runs at that address (not started, stopped, or another port or host)",
        remedy="start it (`prefect server start`), or correct PREFECT_API_URL, or unset it so that the "
        "command starts a temporary server of its own.",
    )


def _status_error(exc: httpx.HTTPStatusError, where: str) -> OperationalError:
    status, path = exc.response.status_code, exc.request.url.path
    detail = _detail(exc.response)
    if status >= 500:
        return PrefectUnavailable(
            f"{where} failed a request: {status} for {path}: {detail}.",
            cause="the Prefect server has a problem of its own; its logs say which",
            remedy="look at the server's logs, then run the same job again (stored clips are reused).",
        )
    cause, remedy = _REFUSALS.get(status, _OTHER_REFUSAL)
    return PrefectRefused(
        f"{where} refused a request: {status} for {path}: {detail}.", cause=cause, remedy=remedy
    )


_CREDENTIALS = "set the credential this server expects, or point PREFECT_API_URL at another server."
_REFUSALS = {
    401: (
        "the server needs credentials: PREFECT_API_KEY (Prefect Cloud) or PREFECT_API_AUTH_STRING",
        _CREDENTIALS,
    ),
    403: ("the credentials (PREFECT_API_KEY or PREFECT_API_AUTH_STRING) do not allow this", _CREDENTIALS),
    404: (
        "PREFECT_API_URL does not point at a Prefect API: another service, or a path without the final "
        "/api (it looks like http://HOST:4200/api)",
        "correct PREFECT_API_URL, or unset it so that the command starts a temporary server of its own.",
    ),
}
_OTHER_REFUSAL = (
    "the server does not accept the request as sent: a flow run's parameters must stay under 512 KB, and a "
    "server of another Prefect version may expect other fields",
    "when the detail is about size, make the job smaller (serve its images over https, or split it); "
    "otherwise run a Prefect server of the client's version. Running the job again resumes it.",
)


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase or "no detail"
    detail = body.get("detail") if isinstance(body, dict) else None
    text = str(detail if detail is not None else body)
    return text if len(text) <= 300 else f"{text[:300]}..."


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Point this process's stdout and stderr (the file descriptors, which a child inherits) at `path`,
    emptied first."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with path.open("wb") as log:  # this start's output only
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        for fd in saved:
            os.close(fd)
