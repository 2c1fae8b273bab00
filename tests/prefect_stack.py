"""A real Prefect server, the deployments of prefect.yaml and a process worker, once per test session.

    pytest_plugins = ["tests.prefect_stack"]      # in a test module; gives the `prefect_stack` fixture

    def test_something(prefect_stack: PrefectStack) -> None:
        run = prefect_stack.run_deployment(ON_DEMAND, {"job": ...})
        assert run.state is not None and run.state.is_completed()

What it starts, as an operator would (docs/deployments.md), all from this virtualenv's own `prefect`:

1. `prefect server start` on a free port, in a PREFECT_HOME of its own (never ~/.prefect), on PostgreSQL (a
   throwaway cluster from tests/stack/postgres.py, what docs/deployments.md recommends for scale-out) or
   on SQLite in that home when E2E_PREFECT_DATABASE=sqlite, or when PostgreSQL is not installed and CI is not
   set. The scheduler loop runs every 2 s, so scheduled deployments get their runs at once.
2. `video-generator setup-prefect` (the work pool and the global prediction limit: `setup_server` is the one
   place that prepares the server), then `prefect --no-prompt deploy --all` from the repository root.
3. `prefect worker start --pool video-generator --work-queue default`, polling every second.

Flow runs write to `data_dir` (VIDEO_GENERATOR_DATA_DIR); read it with `LocalStore(stack.data_dir)`.
`start_worker` starts more workers with more environment (e.g. SUPABASE_URL). Give each its own work queue
and create its runs there (`run_deployment(..., work_queue_name=...)`): the default worker only polls
`default`, so it cannot take them first.

This stack is independent of conftest's `prefect_server` (prefect_test_harness), which sets the API URL in
Prefect's settings context for the test process: everything here passes its URL explicitly, and the child
processes get an environment without the parent's PREFECT_* variables.

Processes run in sessions of their own and are told to stop (then killed) at teardown, with their children;
if pytest itself is killed, they go too (die_with_parent; workers under a small supervisor that also ends
their flow runs).
Logs are under the stack's root; failures quote their tails.

PYTEST_DONT_REWRITE: test modules load this as a plugin (`pytest_plugins`), possibly after another module
imported it; pytest would warn (an error under filterwarnings=error) that it cannot rewrite its asserts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import FlowRun

from tests.stack.postgres import PostgresCluster, find_pg_bindir
from tests.stack.service import clean_env, die_with_parent, free_port

__all__ = [
    "ON_DEMAND",
    "WORK_POOL",
    "PrefectStack",
    "PrefectStackError",
    "StackProcess",
    "prefect_stack",
    "start_prefect_stack",
]

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
WORK_POOL = "video-generator"
DEFAULT_QUEUE = "default"
ON_DEMAND = "generate-video-clips/video-generator-on-demand"

SERVER_STARTUP_TIMEOUT_S = 120.0  # a cold start on a 2-core CI runner, migrations included
CLI_TIMEOUT_S = 120.0
WORKER_ONLINE_TIMEOUT_S = 60.0
RUN_TIMEOUT_S = 180.0
LOG_TAIL_LINES = 60

# Never inherited by the stack's processes: the test process's own Prefect settings, and the project's
# settings a developer's shell may carry (the stack sets its own).
_PRIVATE_PREFIXES = ("PREFECT_", "VIDEO_GENERATOR_", "REPLICATE_", "SUPABASE_")


class PrefectStackError(RuntimeError):
    """The stack could not do what was asked; the message ends with the logs' tails."""


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def _process_tree(root: int) -> list[int]:
    """Every descendant of `root` (from /proc; empty elsewhere). Flow runs started by a process worker run
    in sessions of their own, so signalling the worker's process group does not reach them."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    children: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Field 4 is the parent's pid; the command name (field 2) may contain spaces and parentheses.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal(pid: int, sig: signal.Signals, *, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is gone for our purposes (its parent, which we may have killed, has not reaped it yet).
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


@dataclass
class StackProcess:
    """A process of the stack: its own session, output in `log`. `stop()` ends it and its descendants."""

    name: str
    args: list[str]
    log: Path
    popen: subprocess.Popen[bytes]
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return _tail(self.log, lines)

    def describe(self, lines: int = LOG_TAIL_LINES) -> str:
        status = "running" if self.alive() else f"exited with {self.popen.returncode}"
        return f"--- {self.name} ({status}), last lines of {self.log}:\n{self.log_tail(lines)}"

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to its process group, SIGKILL after `timeout`; then any descendant still there (flow runs
        in sessions of their own) is killed too. Safe to call twice."""
        if self.popen.poll() is None:
            descendants = _process_tree(self.pid)
            _signal(self.pid, signal.SIGTERM, group=True)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal(self.pid, signal.SIGKILL, group=True)
                self.popen.wait(timeout=10)
            deadline = time.monotonic() + 5
            while any(_alive(pid) for pid in descendants) and time.monotonic() < deadline:
                time.sleep(0.1)
            for pid in descendants:
                if _alive(pid):
                    _signal(pid, signal.SIGKILL, group=False)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


@dataclass
class PrefectStack:
    """A running Prefect server with the project's deployments and a worker.

    `env` is the environment of the CLI calls and the workers (PREFECT_API_URL, PREFECT_HOME,
    VIDEO_GENERATOR_DATA_DIR, ...); `database_url` is the server's database.
    """

    api_url: str
    ui_url: str
    env: dict[str, str]
    data_dir: Path
    repo: Path
    home: Path
    root: Path
    database_url: str
    server: StackProcess
    processes: list[StackProcess] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def database(self) -> str:
        """`postgresql` or `sqlite`."""
        return "postgresql" if self.database_url.startswith("postgresql") else "sqlite"

    # --- talking to the server -------------------------------------------------------------------------

    def client(self) -> SyncPrefectClient:
        """A client for this server, whatever PREFECT_API_URL this process has: `with stack.client() as c`."""
        return SyncPrefectClient(api=self.api_url)

    def artifact(self, key: str) -> dict[str, Any] | None:
        """The latest artifact with `key`, as the API returns it, or None. (`/artifacts/filter` misses some
        artifacts in 3.8.8; `/artifacts/{key}/latest` does not.)"""
        response = httpx.get(f"{self.api_url}/artifacts/{key}/latest", timeout=30)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def create_flow_run(
        self,
        deployment: str,
        parameters: Mapping[str, Any],
        *,
        work_queue_name: str | None = None,
        job_variables: Mapping[str, Any] | None = None,
    ) -> FlowRun:
        """A flow run of `deployment` ("flow-name/deployment-name"), as the UI's Run button makes one.
        The server refuses parameters that break the schema (PrefectHTTPStatusError, 409)."""
        with self.client() as client:
            found = client.read_deployment_by_name(deployment)
            return client.create_flow_run_from_deployment(
                found.id,
                parameters=dict(parameters),
                work_queue_name=work_queue_name,
                job_variables=dict(job_variables) if job_variables else None,
            )

    def wait_for_flow_run(self, flow_run_id: UUID, timeout: float = RUN_TIMEOUT_S) -> FlowRun:
        """Poll until the run is in a final state; on timeout, fail with its state, its logs and ours."""
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while True:
                run = client.read_flow_run(flow_run_id)
                if run.state is not None and run.state.is_final():
                    return run
                if time.monotonic() > deadline:
                    state = run.state.type.value if run.state else "no state"
                    raise PrefectStackError(
                        f"flow run {run.name} ({flow_run_id}) still {state} after {timeout:.0f} s\n"
                        f"{self.flow_run_logs(flow_run_id)}\n{self.diagnostics()}"
                    )
                time.sleep(0.5)

    def run_deployment(
        self,
        deployment: str,
        parameters: Mapping[str, Any],
        *,
        timeout: float = RUN_TIMEOUT_S,
        work_queue_name: str | None = None,
        job_variables: Mapping[str, Any] | None = None,
    ) -> FlowRun:
        """Create a run of `deployment` and wait for its final state (whichever it is); returns the run."""
        run = self.create_flow_run(
            deployment, parameters, work_queue_name=work_queue_name, job_variables=job_variables
        )
        return self.wait_for_flow_run(run.id, timeout)

    def flow_run_logs(self, flow_run_id: UUID, limit: int = 200) -> str:
        """The run's log lines as the server has them (for failure messages)."""
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

        try:
            with self.client() as client:
                logs = client.read_logs(
                    LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=limit
                )
        except Exception as exc:  # noqa: BLE001 - a diagnostic must not hide the failure it explains
            return f"--- logs of flow run {flow_run_id}: could not read them: {exc!r}"
        lines = "\n".join(f"{log.timestamp:%H:%M:%S} {log.name}: {log.message}" for log in logs)
        return f"--- logs of flow run {flow_run_id}:\n{lines}"

    # --- processes ---------------------------------------------------------------------------------------

    def run_cli(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        timeout: float = CLI_TIMEOUT_S,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command of this virtualenv (`prefect`, `video-generator`, ...) from the repository root with
        the stack's environment (plus `env`). With `check`, a failure raises with its output and our logs."""
        command = [_program(args[0]), *args[1:]]
        result = subprocess.run(
            command,
            cwd=self.repo,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise PrefectStackError(
                f"{' '.join(args)} failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}\n"
                f"{self.diagnostics()}"
            )
        return result

    def start_process(
        self, name: str, args: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> StackProcess:
        """Start a long-running command (first word looked up in this virtualenv) with the stack's environment
        plus `env`, from the repository root. It is stopped at teardown, or by `handle.stop()`."""
        process = _spawn(
            name, [_program(args[0]), *args[1:]], {**self.env, **(env or {})}, self.root, self.repo
        )
        self.processes.append(process)
        return process

    def start_worker(
        self,
        name: str,
        *,
        work_queue: str = DEFAULT_QUEUE,
        env: Mapping[str, str] | None = None,
        limit: int | None = None,
        wait: bool = True,
    ) -> StackProcess:
        """A `prefect worker start` on the project's pool that polls only `work_queue` (created if missing),
        with the stack's environment plus `env`. With `wait`, returns once the server sees it online."""
        self._ensure_work_queue(work_queue)
        args = ["prefect", "worker", "start", "--pool", WORK_POOL, "--type", "process"]
        args += ["--work-queue", work_queue, "--name", name]
        if limit is not None:
            args += ["--limit", str(limit)]
        worker = self.start_process(f"worker {name}", args, env=env)
        if wait:
            self.wait_for_worker(worker, name)
        return worker

    def wait_for_worker(
        self, worker: StackProcess, name: str, timeout: float = WORKER_ONLINE_TIMEOUT_S
    ) -> None:
        from prefect.client.schemas.filters import WorkerFilter, WorkerFilterStatus

        deadline = time.monotonic() + timeout
        online = WorkerFilter(status=WorkerFilterStatus(any_=["ONLINE"]))
        with self.client() as client:
            while True:
                if not worker.alive():
                    raise PrefectStackError(f"worker {name} exited\n{self.diagnostics()}")
                # offset and limit explicitly: a None body field is a 422 with fastapi >= 0.151.
                workers = client.read_workers_for_work_pool(WORK_POOL, online, offset=0, limit=200)
                if any(w.name == name for w in workers):
                    return
                if time.monotonic() > deadline:
                    raise PrefectStackError(
                        f"worker {name} not online after {timeout:.0f} s\n{self.diagnostics()}"
                    )
                time.sleep(0.25)

    def _ensure_work_queue(self, name: str) -> None:
        from prefect.exceptions import ObjectAlreadyExists

        with self.client() as client, contextlib.suppress(ObjectAlreadyExists):
            client.create_work_queue(name=name, work_pool_name=WORK_POOL)

    # --- diagnostics and teardown ------------------------------------------------------------------------

    def server_errors(self) -> list[str]:
        """The server log's ERROR lines and tracebacks' last lines: a healthy run has none."""
        lines = _tail(self.server.log, 100_000).splitlines()
        return [line for line in lines if "| ERROR" in line or line.startswith(("Traceback", "sqlalchemy."))]

    def diagnostics(self) -> str:
        parts = [f"Prefect stack at {self.api_url} ({self.database}), files in {self.root}"]
        parts += [process.describe() for process in (self.server, *self.processes)]
        return "\n".join(parts)

    def stop(self) -> None:
        """Workers and other processes first (newest first), then the server."""
        for process in reversed(self.processes):
            process.stop()
        self.server.stop(timeout=20)


def _program(name: str) -> str:
    """A command of this virtualenv by its bare name; anything else as given."""
    candidate = BIN / name
    return str(candidate) if os.sep not in name and candidate.exists() else name


# Runs argv[1:] as its child, as a child subreaper (PR_SET_CHILD_SUBREAPER): what its child leaves behind,
# such as a worker's flow runs (in sessions of their own), stays below it instead of going to init. When the
# child exits, or when pytest dies (SIGUSR1 is its parent-death signal), it kills everything still below it.
# Only the standard library, so it starts in milliseconds.
_SUPERVISOR = r"""
import ctypes, os, signal, sys, time

def below():
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as stat:
                    ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(name))
    found, todo = [], [os.getpid()]
    while todo:
        for pid in children.get(todo.pop(), []):
            found.append(pid)
            todo.append(pid)
    return found

def signal_all(sig):
    for pid in below():
        try:
            os.kill(pid, sig)
        except OSError:
            pass

def reap_until_empty(timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return True
        time.sleep(0.05)
    return False

def parent_died(*_):
    signal_all(signal.SIGKILL)
    os._exit(1)

ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
signal.signal(signal.SIGUSR1, parent_died)
# Teardown signals the whole process group: that is for the child. (A handler, unlike SIG_IGN, is reset
# by exec, so the child still gets the default action.)
signal.signal(signal.SIGTERM, lambda *_: None)
signal.signal(signal.SIGINT, lambda *_: None)
child = os.fork()
if child == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
code = 1
while True:
    try:
        pid, status = os.waitpid(-1, 0)
    except ChildProcessError:
        break
    if pid == child:
        code = os.waitstatus_to_exitcode(status)
        break
signal_all(signal.SIGTERM)
if not reap_until_empty(5):
    signal_all(signal.SIGKILL)
    reap_until_empty(5)
sys.exit(code)
"""


def _spawn(
    name: str,
    command: list[str],
    env: Mapping[str, str],
    root: Path,
    cwd: Path,
    *,
    supervised: bool = True,
) -> StackProcess:
    """Start `command` in a session of its own, logging to root/logs/<name>.log.

    If pytest dies, Linux signals it (die_with_parent). `supervised` (workers and the like) runs it under
    _SUPERVISOR, which then kills it and all it started: a worker that has lost its server ignores SIGTERM
    (measured: still there a minute later), and its flow runs hang on their broken output pipe. Unsupervised
    (the server, which starts no processes) gets SIGTERM and shuts down cleanly.
    """
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name.replace(' ', '-').replace('/', '-')}.log"
    on_linux = sys.platform.startswith("linux")
    if supervised and on_linux:
        command = [sys.executable, "-c", _SUPERVISOR, *command]
    death_signal = signal.SIGUSR1 if supervised and on_linux else signal.SIGTERM
    log_file = log.open("ab")
    try:
        popen = subprocess.Popen(
            command,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            # Its own process group, so teardown can stop it with its children, and Ctrl-C reaches pytest
            # (whose teardown stops it) rather than the process directly.
            start_new_session=True,
            preexec_fn=die_with_parent(death_signal),
        )
    except BaseException:
        log_file.close()
        raise
    return StackProcess(name=name, args=command, log=log, popen=popen, _log_file=log_file)


def _base_env() -> dict[str, str]:
    return {k: v for k, v in clean_env().items() if not k.startswith(_PRIVATE_PREFIXES)}


def _choose_database() -> str:
    """postgresql or sqlite, from E2E_PREFECT_DATABASE; by default PostgreSQL when it is installed. CI must
    have it (it installs it for the Supabase tests anyway), so CI never falls back silently."""
    wanted = os.environ.get("E2E_PREFECT_DATABASE", "").strip().lower()
    if wanted in {"sqlite", "postgresql", "postgres"}:
        return "sqlite" if wanted == "sqlite" else "postgresql"
    if wanted:
        raise PrefectStackError(f"E2E_PREFECT_DATABASE={wanted!r}: use postgresql or sqlite")
    if find_pg_bindir() is not None:
        return "postgresql"
    if _in_ci():
        raise PrefectStackError(
            "CI is set and PostgreSQL 15 is not installed (scripts/install-test-services.sh); "
            "set E2E_PREFECT_DATABASE=sqlite to run the Prefect server on SQLite instead"
        )
    print("prefect_stack: PostgreSQL not installed, the Prefect server runs on SQLite", file=sys.stderr)
    return "sqlite"


def _start_server(root: Path, home: Path, database_url: str) -> tuple[StackProcess, str]:
    """`prefect server start` on a free port; returns it and its base URL once /api/health answers."""
    for _attempt in range(3):
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = _base_env() | {
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": database_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": "true",
            # What the UI in the browser calls; the default would be derived from host and port anyway.
            "PREFECT_SERVER_UI_API_URL": f"{base}/api",
            "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
            # Scheduled deployments get their runs within seconds of `prefect deploy`, not a minute later.
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
            "PREFECT_LOGGING_COLORS": "false",
            "PREFECT_CLI_COLORS": "false",
        }
        server = _spawn(
            "prefect-server",
            [_program("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env,
            root,
            root,
            supervised=False,
        )
        deadline = time.monotonic() + SERVER_STARTUP_TIMEOUT_S
        while server.alive() and time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/api/health", timeout=5).status_code == 200:
                    return server, base
            time.sleep(0.25)
        server.stop()
        if "already in use" not in server.log_tail():
            raise PrefectStackError(
                f"the Prefect server did not answer /api/health within {SERVER_STARTUP_TIMEOUT_S:.0f} s\n"
                f"{server.describe()}"
            )
    raise PrefectStackError(f"no free port for the Prefect server after 3 tries\n{server.describe()}")


def setup_server(stack: PrefectStack) -> None:
    """THE place the server is prepared for the deployments, as docs/deployments.md says: the process
    work pool `video-generator` and the global prediction limit (commands/services.py, deployments/)."""
    stack.run_cli("video-generator", "setup-prefect")


def deploy(stack: PrefectStack) -> None:
    """Every deployment in prefect.yaml (docs/deployments.md); --no-prompt: nothing waits for a terminal."""
    stack.run_cli("prefect", "--no-prompt", "deploy", "--all")


@contextlib.contextmanager
def start_prefect_stack(root: Path, *, database: str | None = None) -> Iterator[PrefectStack]:
    """The whole stack in `root` (logs, PREFECT_HOME, data_dir), torn down on exit."""
    began = time.monotonic()
    timings: dict[str, float] = {}
    root.mkdir(parents=True, exist_ok=True)
    home, data_dir = root / "prefect-home", root / "data"
    home.mkdir(exist_ok=True)
    data_dir.mkdir(exist_ok=True)
    database = database or _choose_database()
    if database not in {"postgresql", "sqlite"}:
        raise PrefectStackError(f"database={database!r}: use postgresql or sqlite")
    with contextlib.ExitStack() as cleanup:
        if database == "postgresql":
            cluster = cleanup.enter_context(PostgresCluster())
            cluster.psql("create database prefect")
            database_url = cluster.dsn(db="prefect").replace("postgresql://", "postgresql+asyncpg://", 1)
            timings["postgres"] = time.monotonic() - began
        else:
            database_url = f"sqlite+aiosqlite:///{home / 'prefect.db'}"
        mark = time.monotonic()
        server, base = _start_server(root, home, database_url)
        timings["server"] = time.monotonic() - mark
        env = _base_env() | {
            "PREFECT_API_URL": f"{base}/api",
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "INFO",
            "PREFECT_LOGGING_COLORS": "false",
            "PREFECT_CLI_COLORS": "false",
            "PREFECT_CLI_PROMPT": "false",
            # Workers pick new runs up within a second or two.
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_PREFETCH_SECONDS": "5",
            "COLUMNS": "200",  # rich wraps CLI output at the terminal width; keep messages on one line
            # No VIDEO_GENERATOR_HOME: `prefect deploy` stores this checkout's path (docs/deployments.md).
            "VIDEO_GENERATOR_DATA_DIR": str(data_dir),
            "VIDEO_GENERATOR_RETRY_BACKOFF_SECONDS": "0.05",
        }
        stack = PrefectStack(
            api_url=f"{base}/api",
            ui_url=base,
            env=env,
            data_dir=data_dir,
            repo=REPO,
            home=home,
            root=root,
            database_url=database_url,
            server=server,
            timings=timings,
        )
        cleanup.callback(stack.stop)
        mark = time.monotonic()
        setup_server(stack)
        timings["setup"] = time.monotonic() - mark
        mark = time.monotonic()
        # The worker starts while the deployments are made: both take a few seconds of imports.
        worker = stack.start_worker("e2e-default", wait=False)
        deploy(stack)
        timings["deploy"] = time.monotonic() - mark
        stack.wait_for_worker(worker, "e2e-default")
        timings["worker"] = time.monotonic() - mark
        timings["total"] = time.monotonic() - began
        yield stack


@pytest.fixture(scope="session")
def prefect_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectStack]:
    """The stack for the whole session (see the module's docstring). Tests share it: use fresh job ids."""
    with start_prefect_stack(tmp_path_factory.mktemp("prefect-stack")) as stack:
        timings = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in stack.timings.items())
        print(f"prefect_stack up at {stack.ui_url} on {stack.database}: {timings}", file=sys.stderr)
        yield stack
