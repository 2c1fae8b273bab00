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
from tests.stack.storage import FakeStorage

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
    """Real PostgreSQL + PostgREST and the fake Storage API, behind one base URL."""

    url: str
    service_key: str
    anon_key: str
    storage: FakeStorage


@pytest.fixture(scope="session")
def supabase_stack(supabase_db: SupabaseDb) -> Iterator[SupabaseStack]:
    with SupabaseGateway(supabase_db.postgrest.url, supabase_db.jwt_secret) as gateway:
        yield SupabaseStack(gateway.base_url, supabase_db.service_key, supabase_db.anon_key, gateway.storage)


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
