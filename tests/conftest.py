from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.stack.fixtures import SupabaseDb
from tests.stack.gateway import SupabaseGateway
from tests.stack.storage_server import StorageAdmin, StorageServer, StorageUnavailable, built_app

# supabase_db: real PostgreSQL 15 + PostgREST with the migrations applied, once per session.
pytest_plugins = ["tests.stack.fixtures"]

# No network here, and tests should not report usage anyway.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_JOB = REPO / "examples" / "job.json"


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """One temporary Prefect server (SQLite) for the session: real flow and task runs, real states."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@dataclass(frozen=True)
class SupabaseStack:
    """Real PostgreSQL, PostgREST and Storage behind one base URL, as in a Supabase project. `storage` reads
    Storage's tables and the gateway's request record, and injects faults in front of Storage."""

    url: str
    service_key: str
    anon_key: str
    storage: StorageAdmin


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


@pytest.fixture(scope="session")
def supabase_stack(supabase_db: SupabaseDb) -> Iterator[SupabaseStack]:
    """The real Storage server on the session's database (its migrations add the `storage` schema beside
    ours), and the gateway in front of it and PostgREST."""
    try:
        app = built_app()  # the cached build, or about a minute to build it the first time
    except StorageUnavailable as exc:
        if _in_ci():
            pytest.fail(f"CI is set, so the Storage tests may not be skipped: {exc}", pytrace=False)
        pytest.skip(str(exc))
    with (
        StorageServer(app, supabase_db.postgres, jwt_secret=supabase_db.jwt_secret) as server,
        SupabaseGateway(supabase_db.postgrest.url, server.url) as gateway,
    ):
        # Storage's migrations (DB_INSTALL_ROLES) also grant `postgres` to authenticator; on Supabase it is a
        # member of the three API roles only (supabase_roles.sql), so a JWT cannot make PostgREST the owner.
        supabase_db.postgres.psql("revoke postgres from authenticator")
        storage = StorageAdmin(supabase_db.postgres, server, gateway.storage)
        yield SupabaseStack(gateway.base_url, supabase_db.service_key, supabase_db.anon_key, storage)


@pytest.fixture
def supabase_env(supabase_stack: SupabaseStack, monkeypatch: pytest.MonkeyPatch) -> SupabaseStack:
    """Point the settings at the stack, as a deployment's environment would."""
    monkeypatch.setenv("SUPABASE_URL", supabase_stack.url)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", supabase_stack.service_key)
    supabase_stack.storage.clear_faults()
    return supabase_stack


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own local store, and no setting leaks in from the developer's shell."""
    for name in (
        "VIDEO_GENERATOR_PROVIDER",
        "VIDEO_GENERATOR_STORE",
        "VIDEO_GENERATOR_CONCURRENCY",
        "VIDEO_GENERATOR_MIN_CLIPS",
        "VIDEO_GENERATOR_CLIP_TIMEOUT_SECONDS",
        "VIDEO_GENERATOR_DURATION_BUFFER",
        "REPLICATE_API_TOKEN",
        "REPLICATE_BASE_URL",
        "SUPABASE_URL",
        "SUPABASE_SERVICE_ROLE_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "data"
    monkeypatch.setenv("VIDEO_GENERATOR_DATA_DIR", str(path))
    monkeypatch.setenv("VIDEO_GENERATOR_RETRY_BACKOFF_SECONDS", "0.05")
    return path


@pytest.fixture
def example_job(tmp_path: Path) -> Path:
    """A copy of the shipped example job and its images, so tests can edit it."""
    target = tmp_path / "example"
    shutil.copytree(EXAMPLE_JOB.parent, target)
    return target / "job.json"


def write_job(path: Path, job: dict[str, object]) -> Path:
    path.write_text(json.dumps(job))
    return path
