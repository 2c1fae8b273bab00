from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

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
