"""Secrets never leak: the Replicate token and the Supabase service key appear in no output, log, event,
artifact, record or error message, on the happy path and on the error paths.

Each test runs a realistic path with distinctive secret values set, then searches everything the run left
behind: the CLI's stdout and stderr (fd level), every Python log record at DEBUG (httpx and httpcore
included, and Prefect's own loggers), the result JSON, the store (local: every file under the data
directory, SQLite included; Supabase: the rows), and what Prefect holds: flow and task runs (parameters,
state messages), the run's logs, the artifacts and the events, read through the Prefect API, plus the bytes
of the Prefect server's database.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import prefect.main  # noqa: F401 - configures Prefect's logging now, before a test adds handlers
import pydantic
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterName,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

from clipgen.backends import register_provider
from clipgen.failures import EXIT_STORE_UNAVAILABLE
from clipgen.settings import Settings
from clipgen.stores.local import LocalStore
from commands.cli import main
from staging.fake_replicate.server import FakeReplicateServer, Fault
from supabase import ClientOptions, create_client
from tests.conftest import SupabaseStack, write_job
from tests.doubles import ScriptedProvider
from tests.stack.postgrest import jwt_key, new_jwt_secret

pytestmark = pytest.mark.usefixtures("prefect_server")

# Distinctive values: any occurrence anywhere is a leak. Prefixes as the real ones have.
TOKEN = f"r8_LeakCheckToken{uuid4().hex}"
WRONG_TOKEN = f"r8_LeakCheckWrongToken{uuid4().hex}"
LOCAL_SERVICE_KEY = f"LeakCheckServiceKey{uuid4().hex}"
API_TOKEN = f"LeakCheckApiToken{uuid4().hex}"
FLAGS = ["--model", "veo-3.1", "--verbose"]  # veo-3.1 takes text-only prompts; --verbose: Prefect's logs too


class Everything(logging.Handler):
    """Every record, formatted with its arguments and any traceback, from every logger."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(f"{self.format(record)} {record.args!r} {record.__dict__!r}")
        except Exception as exc:  # noqa: BLE001 - a record that cannot be formatted is searched raw
            self.lines.append(f"{record.msg!r} {record.args!r} ({exc!r})")


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> Iterator[Everything]:
    """caplog at DEBUG on the root, httpx and httpcore; a handler on every logger that does not propagate to
    the root (some of Prefect's); and Prefect's loggers at DEBUG for the test."""
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "replicate", "supabase", "postgrest", "storage3", "clipgen"):
        caplog.set_level(logging.DEBUG, logger=name)
    handler = Everything()
    loggers = [logging.getLogger()] + [
        logger
        for logger in logging.root.manager.loggerDict.values()
        if isinstance(logger, logging.Logger) and not logger.propagate
    ]
    prefect = [logging.getLogger("prefect")] + [
        logger
        for name, logger in logging.root.manager.loggerDict.items()
        if name.startswith("prefect.") and isinstance(logger, logging.Logger) and logger.level
    ]
    levels = {logger: logger.level for logger in prefect}
    for logger in loggers:
        logger.addHandler(handler)
    for logger in prefect:
        logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        for logger, level in levels.items():
            logger.setLevel(level)


def text_job(tmp_path: Path, *prompts: str) -> tuple[UUID, Path]:
    job_id = uuid4()
    clips = [{"clip_index": i, "prompt": p, "duration": 4.0} for i, p in enumerate(prompts)]
    return job_id, write_job(tmp_path / f"{job_id}.json", {"job_id": str(job_id), "clip_prompts": clips})


# --- what Prefect holds ---------------------------------------------------------------------------------


def prefect_record(job_id: UUID, want_logs: str) -> dict[str, str]:
    """Everything Prefect keeps about the job's run, as text, by where it came from."""
    APILogWorker.drain_all(timeout=10, at_exit=False)
    found: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"video-clips-{job_id}"]))
        )
        assert len(runs) == 1, runs
        run = runs[0]
        found["flow run"] = run.model_dump_json()
        found["flow run states"] = json.dumps(
            [s.model_dump(mode="json") for s in client.read_flow_run_states(run.id)]
        )
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
        assert tasks, "the clip tasks ran"
        found["task runs"] = json.dumps([t.model_dump(mode="json") for t in tasks])

        deadline = time.monotonic() + 20
        while True:  # logs reach the server in batches
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
            found["run logs"] = json.dumps([log.model_dump(mode="json") for log in logs])
            if want_logs in found["run logs"] or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert want_logs in found["run logs"], "the run's logs were read"

        for key in (f"video-clips-{job_id}", f"video-clips-{job_id}-table"):
            response = client._client.get(f"/artifacts/{key}/latest")
            assert response.status_code == 200, (key, response.text)
            found[f"artifact {key}"] = response.text

        for resource in (f"video-generator.job.{job_id}", f"prefect.flow-run.{run.id}"):
            query = {"filter": {"any_resource": {"id": [resource]}, "order": "ASC"}, "limit": 50}
            deadline = time.monotonic() + 20
            while True:  # events reach the server asynchronously
                events = client._client.post("/events/filter", json=query).json()["events"]
                final = any(
                    e["event"].endswith(("complete", "failed", "Completed", "Failed")) for e in events
                )
                if final or time.monotonic() > deadline:
                    break
                time.sleep(0.3)
            assert events, f"events of {resource}"
            found[f"events of {resource}"] = json.dumps(events)
    return found


def prefect_database_bytes() -> dict[str, bytes]:
    """The Prefect server's SQLite files (database, write-ahead log): runs, logs, artifacts, events."""
    url = str(PREFECT_SERVER_DATABASE_CONNECTION_URL.value())
    database = Path(url.split(":///", 1)[1])
    return {f"prefect database {f.name}": f.read_bytes() for f in database.parent.glob(f"{database.name}*")}


def files_under(root: Path) -> dict[str, bytes]:
    return {f"file {p}": p.read_bytes() for p in root.rglob("*") if p.is_file()}


def what_was_said(
    printed: tuple[str, str], caplog: pytest.LogCaptureFixture, all_logs: Everything
) -> dict[str, str]:
    """Everything the run printed (`capfd.readouterr()`: out, err) or logged, by where it went."""
    out, err = printed
    return {
        "stdout": out,
        "stderr": err,
        "caplog": caplog.text,
        "log records": "\n".join(all_logs.lines),
    }


def assert_nowhere(secrets: list[str], texts: dict[str, str], blobs: dict[str, bytes] | None = None) -> None:
    empty = [where for where, text in texts.items() if not text and where != "stderr"]  # may be quiet
    assert texts and not empty, f"nothing was read from {empty}"
    for secret in secrets:
        leaks = [where for where, text in texts.items() if secret in text]
        leaks += [where for where, blob in (blobs or {}).items() if secret.encode() in blob]
        assert not leaks, f"a secret ({secret[:12]}…) leaked into: {leaks}"


# --- (a) the CLI on Replicate -----------------------------------------------------------------------------


def cli_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """`run` sets these in os.environ with setdefault: registered here so they are restored after."""
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    monkeypatch.delenv("PREFECT_LOGGING_LEVEL", raising=False)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeReplicateServer]:
    with FakeReplicateServer(token=TOKEN, latency_s=0.05) as server:
        yield server


@pytest.fixture
def secret_env(fake: FakeReplicateServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLICATE_API_TOKEN", TOKEN)
    monkeypatch.setenv("REPLICATE_BASE_URL", fake.base_url)
    monkeypatch.setenv("REPLICATE_POLL_INTERVAL", "0.05")
    # Set but unused by the local store: must not surface either.
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", LOCAL_SERVICE_KEY)
    monkeypatch.setenv("VIDEO_GENERATOR_API_TOKEN", API_TOKEN)
    cli_environment(monkeypatch)


@pytest.mark.usefixtures("secret_env")
def test_a_replicate_run_with_a_failing_clip_leaks_no_secret(
    fake: FakeReplicateServer,
    tmp_path: Path,
    data_dir: Path,
    all_logs: Everything,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    tag = uuid4().hex
    fake.add_fault(Fault(kind="fail", match=f"{tag} rejected", times=-1, error="flagged as sensitive (E005)"))
    job_id, job = text_job(tmp_path, f"{tag} rejected", f"{tag} a", f"{tag} b", f"{tag} c")
    output = tmp_path / "clips.json"
    creates = fake.creates
    code = main(["run", str(job), "--provider", "replicate", *FLAGS, "--output", str(output)])
    printed = capfd.readouterr()

    assert code == 0, printed.err
    assert fake.creates == creates + 4  # the token worked: every clip was created
    result = json.loads(output.read_text())
    assert result["successful_clips"] == 3 and "E005" in result["clips"][0]["error"]
    assert any("HTTP Request: POST" in line for line in all_logs.lines)  # httpx's request log was captured
    store = LocalStore(data_dir)
    texts = {
        **what_was_said(printed, caplog, all_logs),
        "result": output.read_text(),
        "job_events": json.dumps([e.model_dump(mode="json") for e in store.events(job_id)]),
        "clip rows": json.dumps([r.model_dump(mode="json") for r in store.clip_records(job_id)]),
        "prediction rows": json.dumps([r.model_dump(mode="json") for r in store.predictions(job_id)]),
        **prefect_record(job_id, want_logs="clips on veo-3.1"),
    }
    assert "E005" in texts["clip rows"] and "E005" in texts["job_events"]
    prefect_database = prefect_database_bytes()
    assert any(str(job_id).encode() in blob for blob in prefect_database.values())  # the right database
    assert_nowhere([TOKEN, LOCAL_SERVICE_KEY, API_TOKEN], texts, files_under(data_dir) | prefect_database)


@pytest.mark.usefixtures("secret_env")
def test_a_wrong_token_fails_every_clip_and_leaks_neither_token(
    fake: FakeReplicateServer,
    tmp_path: Path,
    data_dir: Path,
    all_logs: Everything,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REPLICATE_API_TOKEN", WRONG_TOKEN)
    job_id, job = text_job(tmp_path, "a lantern", "a kite", "a boat")
    output = tmp_path / "clips.json"
    creates = fake.creates
    code = main(["run", str(job), "--provider", "replicate", *FLAGS, "--output", str(output)])
    printed = capfd.readouterr()

    assert code == 1
    assert fake.creates == creates
    result = json.loads(output.read_text())
    assert result["failed_clips"] == 3
    store = LocalStore(data_dir)
    records = store.clip_records(job_id)
    assert [r.status for r in records] == ["failed"] * 3
    assert all("401" in (r.error or "") for r in records)
    texts = {
        **what_was_said(printed, caplog, all_logs),
        "result": output.read_text(),
        "job_events": json.dumps([e.model_dump(mode="json") for e in store.events(job_id)]),
        "clip rows": json.dumps([r.model_dump(mode="json") for r in records]),
        **prefect_record(job_id, want_logs="401"),
    }
    blobs = files_under(data_dir) | prefect_database_bytes()
    assert_nowhere([WRONG_TOKEN, TOKEN, LOCAL_SERVICE_KEY, API_TOKEN], texts, blobs)


# --- (b) the Supabase store -----------------------------------------------------------------------------


def supabase_rows(stack: SupabaseStack, table: str, job_id: UUID) -> list[dict[str, Any]]:
    with httpx.Client(timeout=10) as http:
        client = create_client(stack.url, stack.service_key, ClientOptions(httpx_client=http))
        data: list[dict[str, Any]] = client.table(table).select("*").eq("job_id", str(job_id)).execute().data
    return data


def test_supabase_storage_faults_leak_no_key(
    supabase_env: SupabaseStack,
    tmp_path: Path,
    data_dir: Path,
    all_logs: Everything,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REPLICATE_API_TOKEN", TOKEN)
    cli_environment(monkeypatch)
    register_provider("scripted-secrets", lambda settings: ScriptedProvider())
    # The next uploads: a storage outage the clip task retries (503), then a refusal (403): that clip fails.
    supabase_env.storage.fail_next(1, status=503, bucket="video-clips", operation="upload")
    supabase_env.storage.fail_next(1, status=403, bucket="video-clips", operation="upload")
    job_id, job = text_job(tmp_path, "one", "two", "three", "four")
    output = tmp_path / "clips.json"
    flags = ["--provider", "scripted-secrets", "--store", "supabase", "--concurrency", "1", *FLAGS]
    code = main(["run", str(job), *flags, "--output", str(output)])
    printed = capfd.readouterr()

    assert code == 0, printed.err
    result = json.loads(output.read_text())
    assert result["successful_clips"] == 3
    # Which clip meets the refusal depends on the order uploads reach the server: stores run outside the slot.
    errors = [clip["error"] for clip in result["clips"] if clip["error"]]
    assert len(errors) == 1 and "Supabase Storage 403" in errors[0], errors
    events = supabase_rows(supabase_env, "job_events", job_id)
    assert any("Supabase Storage 503" in json.dumps(e["data"]) for e in events)  # the retried outage
    texts = {
        **what_was_said(printed, caplog, all_logs),
        "result": output.read_text(),
        "job_events rows": json.dumps(events),
        "clips rows": json.dumps(supabase_rows(supabase_env, "clips", job_id)),
        "clip_thumbnails rows": json.dumps(supabase_rows(supabase_env, "clip_thumbnails", job_id)),
        **prefect_record(job_id, want_logs="clips on veo-3.1"),
    }
    assert any("Supabase Storage 503" in line for line in all_logs.lines)  # the task's retry, logged
    blobs = files_under(data_dir) | prefect_database_bytes()
    assert_nowhere([supabase_env.service_key, TOKEN], texts, blobs)


def test_a_wrong_supabase_key_fails_the_run_and_is_not_repeated(
    supabase_env: SupabaseStack,
    tmp_path: Path,
    all_logs: Everything,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wrong_key = jwt_key(new_jwt_secret(), "service_role")  # well-formed, signed with another secret
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", wrong_key)
    cli_environment(monkeypatch)
    register_provider("scripted-secrets", lambda settings: ScriptedProvider())
    _, job = text_job(tmp_path, "one", "two", "three")
    code = main(["run", str(job), "--provider", "scripted-secrets", "--store", "supabase", *FLAGS])
    printed = capfd.readouterr()

    assert code == EXIT_STORE_UNAVAILABLE  # the store refused the credentials: 6, not a failed job
    assert "JWSInvalidSignature" in printed.err  # the refusal, without the key
    texts = what_was_said(printed, caplog, all_logs)
    signature = wrong_key.rsplit(".", 1)[1]
    assert_nowhere([wrong_key, signature, supabase_env.service_key], texts, prefect_database_bytes())


def test_the_search_finds_a_planted_secret(all_logs: Everything, caplog: pytest.LogCaptureFixture) -> None:
    """The control: a secret that does reach a log is found, in both captures."""
    logging.getLogger("clipgen.anything").debug("calling with %s", TOKEN)
    logging.getLogger("uvicorn").warning("oops %s", TOKEN)  # Prefect configures it not to propagate
    texts = {"caplog": caplog.text, "log records": "\n".join(all_logs.lines)}
    for where, text in texts.items():
        with pytest.raises(AssertionError, match="leaked into"):
            assert_nowhere([TOKEN], {where: text})
    assert "oops" in texts["log records"]  # loggers that do not propagate are searched too


# --- (c) settings and their errors ----------------------------------------------------------------------


def test_settings_print_no_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REPLICATE_API_TOKEN", TOKEN)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", LOCAL_SERVICE_KEY)
    monkeypatch.setenv("VIDEO_GENERATOR_API_TOKEN", API_TOKEN)
    settings = Settings()
    assert settings.replicate_api_token is not None
    assert settings.replicate_api_token.get_secret_value() == TOKEN  # read, and only this way
    texts = {
        "repr": repr(settings),
        "str": str(settings),
        "dump": repr(settings.model_dump()),
        "json": settings.model_dump_json(),
        "fields": repr(list(settings)),
    }
    assert "**********" in texts["repr"]

    # A bad setting next to the secrets: pydantic's error, and the CLI's refusal.
    monkeypatch.setenv("VIDEO_GENERATOR_CONCURRENCY", "many")
    monkeypatch.setenv("VIDEO_GENERATOR_SIGNED_URL_TTL_SECONDS", "1")
    with pytest.raises(pydantic.ValidationError) as refused:
        Settings()
    texts["validation error"] = str(refused.value) + repr(refused.value.errors())
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "VIDEO_GENERATOR_CONCURRENCY" in err
    texts["cli refusal"] = err
    assert_nowhere([TOKEN, LOCAL_SERVICE_KEY, API_TOKEN], texts)
