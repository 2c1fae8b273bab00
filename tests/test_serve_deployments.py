"""`python deployments/serve.py`: both deployments served from one process, against a real Prefect server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL

from clipgen.job_files import load_job
from clipgen.stores.local import LocalStore
from tests.conftest import EXAMPLE_JOB, REPO
from tests.stack.service import die_with_parent

pytestmark = pytest.mark.usefixtures("prefect_server")

ON_DEMAND = "generate-video-clips/video-generator-on-demand"
QUEUE = "process-video-job-queue/video-generator-queue"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[SyncPrefectClient, Path]]:
    api_url = str(PREFECT_API_URL.value())
    data_dir = tmp_path / "served-data"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PREFECT_", "VIDEO_GENERATOR_", "REPLICATE_", "SUPABASE_"))
    }
    env |= {
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "VIDEO_GENERATOR_DATA_DIR": str(data_dir),
    }
    log = (tmp_path / "serve.log").open("w")
    # From another directory: serve.py finds the repository itself.
    process = subprocess.Popen(
        [sys.executable, str(REPO / "deployments" / "serve.py")],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent(signal.SIGTERM),
    )
    try:
        with SyncPrefectClient(api=api_url) as client:
            yield client, data_dir
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def wait_for_deployment(client: SyncPrefectClient, name: str, since: float, timeout: float = 90) -> UUID:
    deadline = time.monotonic() + timeout
    while True:
        try:
            deployment = client.read_deployment_by_name(name)
            if deployment.updated and deployment.updated.timestamp() >= since:
                return deployment.id
        except ObjectNotFound:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} was not served within {timeout} s")
        time.sleep(0.5)


def test_serve_runs_both_deployments_from_one_process(
    served: tuple[SyncPrefectClient, Path], tmp_path: Path
) -> None:
    client, data_dir = served
    began = time.time() - 1
    on_demand = wait_for_deployment(client, ON_DEMAND, began)
    queue = client.read_deployment(wait_for_deployment(client, QUEUE, began))
    assert [s.schedule.cron for s in queue.schedules] == ["* * * * *"]  # type: ignore[union-attr]
    assert client.read_deployment(on_demand).enforce_parameter_schema

    # Its images go to the served store; cached elsewhere, so the served run reads them back from the store.
    job = load_job(EXAMPLE_JOB, LocalStore(data_dir), tmp_path / "cli-cache")
    run = client.create_flow_run_from_deployment(
        on_demand, parameters={"job": job.model_dump(mode="json"), "options": {"model": "veo-3.1"}}
    )
    deadline = time.monotonic() + 180
    while not (state := client.read_flow_run(run.id).state) or not state.is_final():
        assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-4000:]
        time.sleep(0.5)

    assert state.is_completed(), (state, (tmp_path / "serve.log").read_text()[-4000:])
    assert state.message == "6/6 clips"
    records = LocalStore(data_dir).clip_records(job.job_id)
    assert [r.status for r in records] == ["success"] * 6
