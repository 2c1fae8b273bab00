"""One server process of the test stack: PostgreSQL, PostgREST and Storage each run as a `ServiceProcess`.

It owns what the three have in common: a temporary directory of their own, starting on a free port (again
on another when a second test session took it first), waiting until the server answers, and stopping with a
sequence of signals so a stuck server cannot hang the session. What differs (the command, its ports and
config, the readiness probe) is the caller's.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    """A port nobody listens on right now. Another process can still take it: callers retry on a clash."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def die_with_parent(sig: signal.Signals) -> Callable[[], None] | None:
    """A preexec_fn asking Linux to send `sig` to the child when the test process dies, even by SIGKILL,
    so a killed pytest leaves no server behind. It runs after subprocess has switched users, which matters:
    the kernel clears this setting when credentials change."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(sig), 0, 0, 0)

    return preexec


def clean_env(prefixes: tuple[str, ...] = ("PG",)) -> dict[str, str]:
    """The environment without the caller's PG* settings (PGHOST, PGOPTIONS, PGPASSWORD, ...), which
    libpq would otherwise apply to every connection our servers and psql make."""
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


# SIGTERM, then SIGKILL if the server has not gone after the wait.
TERMINATE_THEN_KILL = ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0))


@dataclass(frozen=True)
class Launch:
    """One try at starting the server: made by the caller after it picked the try's ports."""

    command: list[str]
    env: dict[str, str]
    cwd: Path | None = None  # the service's directory unless given
    popen: Mapping[str, Any] = field(default_factory=dict)  # e.g. the user and group to run as


class ServiceProcess:
    """A server in `root` (a new temporary directory, deleted by `stop`), its output in `log_file`.

    `open(launch, ready)` runs `launch()` and polls `ready()` until it says yes, the process exits, or
    `startup_timeout` passes; when the log says the port was taken (`port_taken`, any case), it tries again.
    """

    def __init__(
        self,
        name: str,
        *,
        prefix: str,
        port_taken: Sequence[str],
        startup_timeout: float,
        die_signal: signal.Signals = signal.SIGTERM,
        stop_signals: Sequence[tuple[signal.Signals, float]] = TERMINATE_THEN_KILL,
        probe_interval_s: float = 0.05,
        tries: int = 5,
    ) -> None:
        self.name = name
        self.prefix = prefix
        self.port_taken = [mark.lower() for mark in port_taken]
        self.startup_timeout = startup_timeout
        self.die_signal = die_signal
        self.stop_signals = stop_signals
        self.probe_interval_s = probe_interval_s
        self.tries = tries
        self.root = Path()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def log_file(self) -> Path:
        return self.root / f"{self.prefix.strip('-')}.log"

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.is_file() else ""

    def open(
        self,
        launch: Callable[[], Launch],
        ready: Callable[[], bool],
        *,
        parent: Path | None = None,
        prepare: Callable[[], object] = lambda: None,
    ) -> None:
        """Make `root` (under `parent`, else the temp dir), `prepare()` it, start the server: on any failure
        it is stopped and its directory deleted before the error goes on."""
        self.root = Path(tempfile.mkdtemp(prefix=self.prefix, dir=parent))
        try:
            prepare()
            self._start(launch, ready)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server, then delete its directory. Safe to call twice."""
        self._stop_process()
        if self.root != Path() and self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)
        self.root = Path()

    def _start(self, launch: Callable[[], Launch], ready: Callable[[], bool]) -> None:
        for _attempt in range(self.tries):
            self._spawn(launch())
            if self._wait_ready(ready):
                return
            if not any(mark in self.log_text().lower() for mark in self.port_taken):
                break
        raise RuntimeError(f"{self.name} did not start; its log:\n{self.log_text()[-5000:]}")

    def _spawn(self, launch: Launch) -> None:
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                launch.command,
                cwd=launch.cwd or self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=launch.env,
                # Its own session: a Ctrl-C in the terminal reaches pytest, whose teardown stops it.
                start_new_session=True,
                preexec_fn=die_with_parent(self.die_signal),
                **launch.popen,
            )

    def _wait_ready(self, ready: Callable[[], bool]) -> bool:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                return False
            if ready():
                return True
            time.sleep(self.probe_interval_s)
        self._stop_process()
        return False

    def _stop_process(self) -> None:
        """Each signal in turn, until the process has gone."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        for sig, wait in self.stop_signals:
            process.send_signal(sig)
            try:
                process.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


def answers_ok(url: str) -> bool:
    """A readiness probe: `url` answers 200 (a refused or reset connection is a no)."""
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.TransportError:
        return False
