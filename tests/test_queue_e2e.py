"""The queue deployment and the global prediction limit, end to end: a real Prefect server, `prefect deploy`,
process workers, the CLI as an operator uses it, and (for the disjoint-claims test) the real PostgreSQL.

Each test uses a worker of its own on a work queue of its own, so runs of the every-minute schedule (taken by
the stack's default worker, on its own data directory) never touch the jobs a test queued.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from prefect.states import Cancelling

from clipgen.settings import Settings
from clipgen.stores.base import REFERENCE_BUCKET
from clipgen.stores.local import LocalStore
from clipgen.stores.supabase import SupabaseStore
from commands.cli import main
from staging.fake_replicate.server import FakeReplicateServer, Fault
from tests.conftest import SupabaseStack
from tests.photos import make_photo
from tests.prefect_stack import ON_DEMAND, PrefectStack
from tests.stack.fixtures import SupabaseDb

pytest_plugins = ["tests.prefect_stack"]

QUEUE = "process-video-job-queue/video-generator-queue"


def job_file(directory: Path, clips: int = 2, **prompt: Any) -> tuple[UUID, Path]:
    job_id = uuid4()
    job = {
        "job_id": str(job_id),
        "clip_prompts": [
            {"clip_index": i, "prompt": f"queued clip {i}", "duration": 4.0, **prompt} for i in range(clips)
        ],
    }
    path = directory / f"{job_id}.json"
    path.write_text(json.dumps(job))
    return job_id, path


def subflow_runs(stack: PrefectStack, job_id: UUID) -> int:
    with stack.client() as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"video-clips-{job_id}"]))
        )
    return len(runs)


def test_submitted_jobs_are_processed_once_by_the_queue_deployment(
    prefect_stack: PrefectStack, tmp_path: Path
) -> None:
    data_dir = tmp_path / "queue-data"
    prefect_stack.start_worker(
        "queue-local", work_queue="queue-local", env={"VIDEO_GENERATOR_DATA_DIR": str(data_dir)}
    )
    jobs = [job_file(tmp_path), job_file(tmp_path)]
    for _, path in jobs:
        out = prefect_stack.run_cli(
            "video-generator",
            "submit",
            str(path),
            "--model",
            "veo-3.1",
            env={"VIDEO_GENERATOR_DATA_DIR": str(data_dir)},
        ).stdout
        assert "queued job" in out

    run = prefect_stack.run_deployment(QUEUE, {"max_jobs": 10}, work_queue_name="queue-local")

    assert run.state is not None and run.state.is_completed(), prefect_stack.flow_run_logs(run.id)
    assert run.state.message == "2 jobs: 2 succeeded"
    store = LocalStore(data_dir)
    for job_id, _ in jobs:
        row = store.queued_job(job_id)
        assert row is not None and (row.status, row.attempts) == ("succeeded", 1)
        assert row.claimed_by is not None and str(run.id) in row.claimed_by
        assert [r.status for r in store.clip_records(job_id)] == ["success", "success"]
        assert subflow_runs(prefect_stack, job_id) == 1
    again = prefect_stack.run_deployment(QUEUE, {"max_jobs": 10}, work_queue_name="queue-local")
    assert again.state is not None and again.state.message == "no queued jobs"


def test_a_stale_claim_is_taken_over_after_its_lease(prefect_stack: PrefectStack, tmp_path: Path) -> None:
    data_dir = tmp_path / "stale-data"
    prefect_stack.start_worker(
        "queue-stale", work_queue="queue-stale", env={"VIDEO_GENERATOR_DATA_DIR": str(data_dir)}
    )
    job_id, path = job_file(tmp_path)
    prefect_stack.run_cli(
        "video-generator",
        "submit",
        str(path),
        "--model",
        "veo-3.1",
        env={"VIDEO_GENERATOR_DATA_DIR": str(data_dir)},
    )
    store = LocalStore(data_dir)
    # A queue run that claimed the job and died: its lease is never renewed.
    dead = store.claim_job("crashed-host/video-job-queue/0", lease_seconds=2)
    assert dead is not None
    assert store.claim_job("someone-else", lease_seconds=60) is None  # the lease holds until it expires
    assert dead.lease_expires_at is not None
    time.sleep(max(0.0, dead.lease_expires_at.timestamp() - time.time()) + 0.2)

    run = prefect_stack.run_deployment(QUEUE, {"max_jobs": 10}, work_queue_name="queue-stale")

    assert run.state is not None and run.state.message == "1 job: 1 succeeded", prefect_stack.flow_run_logs(
        run.id
    )
    row = store.queued_job(job_id)
    assert row is not None and (row.status, row.attempts) == ("succeeded", 2)
    assert row.claimed_by is not None and str(run.id) in row.claimed_by


def test_two_queue_runs_on_postgresql_claim_disjoint_jobs(
    prefect_stack: PrefectStack,
    supabase_stack: SupabaseStack,
    supabase_db: SupabaseDb,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    supabase_db.postgres.psql("delete from public.video_jobs")
    env = {
        "VIDEO_GENERATOR_STORE": "supabase",
        "SUPABASE_URL": supabase_stack.url,
        "SUPABASE_SERVICE_ROLE_KEY": supabase_stack.service_key,
        "VIDEO_GENERATOR_PROVIDER": "tests.doubles:paced_provider",  # a second per clip: the runs overlap
        "VIDEO_GENERATOR_DATA_DIR": str(tmp_path / "supabase-worker"),
        # One job at a time per run: a run holding several would claim all six before the other starts.
        "VIDEO_GENERATOR_QUEUE_JOBS_AT_ONCE": "1",
    }
    prefect_stack.start_worker("queue-supabase", work_queue="queue-supabase", env=env)
    monkeypatch.setenv("SUPABASE_URL", supabase_stack.url)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", supabase_stack.service_key)
    jobs = [job_file(tmp_path)[0] for _ in range(6)]
    for job_id in jobs:
        assert (
            main(["submit", str(tmp_path / f"{job_id}.json"), "--model", "veo-3.1", "--store", "supabase"])
            == 0
        )

    runs = [
        prefect_stack.create_flow_run(QUEUE, {"max_jobs": 10}, work_queue_name="queue-supabase")
        for _ in range(2)
    ]
    finished = [prefect_stack.wait_for_flow_run(run.id, timeout=240) for run in runs]

    taken: dict[UUID, list[UUID]] = {run.id: [] for run in runs}
    store = SupabaseStore.from_settings(Settings())
    rows = [store.queued_job(job_id) for job_id in jobs]
    store.close()
    for row in rows:
        assert row is not None and (row.status, row.attempts) == ("succeeded", 1), row
        owner = [run_id for run_id in taken if str(run_id) in (row.claimed_by or "")]
        assert len(owner) == 1, row.claimed_by
        taken[owner[0]].append(row.job_id)
    assert all(taken.values()), f"one run took every job: {taken}"
    messages = sorted(run.state.message for run in finished if run.state)
    assert messages == sorted(
        f"{len(ids)} job{'s' if len(ids) > 1 else ''}: {len(ids)} succeeded" for ids in taken.values()
    )


def test_the_global_limit_caps_predictions_across_runs(prefect_stack: PrefectStack, tmp_path: Path) -> None:
    limit = f"predictions-{uuid4().hex[:8]}"
    prefect_stack.run_cli(
        "video-generator",
        "setup-prefect",
        "--prediction-limit",
        "2",
        env={"VIDEO_GENERATOR_PREDICTION_LIMIT": limit},
    )
    with FakeReplicateServer(token="e2e-token", latency_s=1.0) as fake:
        env = {
            "REPLICATE_API_TOKEN": "e2e-token",
            "REPLICATE_BASE_URL": fake.base_url,
            "REPLICATE_POLL_INTERVAL": "0.2",
            "VIDEO_GENERATOR_PREDICTION_LIMIT": limit,
        }
        prefect_stack.start_worker("replicate", work_queue="replicate", env=env)
        runs = []
        for _ in range(2):
            _, path = job_file(tmp_path, clips=4)
            job = json.loads(path.read_text())
            runs.append(
                prefect_stack.create_flow_run(
                    ON_DEMAND,
                    {"job": job, "options": {"model": "veo-3.1", "concurrency": 5}, "provider": "replicate"},
                    work_queue_name="replicate",
                )
            )
        finished = [prefect_stack.wait_for_flow_run(run.id, timeout=240) for run in runs]

        for run in finished:
            assert run.state is not None and run.state.is_completed(), prefect_stack.flow_run_logs(run.id)
        assert fake.creates == 8
        # Two runs of five concurrent clips each, but never more than the limit's 2 predictions in flight.
        assert fake.max_in_flight == 2


def test_submitted_photos_reach_a_worker_on_another_machine_through_supabase(
    prefect_stack: PrefectStack,
    supabase_stack: SupabaseStack,
    supabase_db: SupabaseDb,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A phone photo each: the CLI uploads them, the queue row and the subflow's parameters carry store://
    references, and a worker with a disk of its own (nothing cached) reads them back from Supabase Storage."""
    supabase_db.postgres.psql("delete from public.video_jobs")
    supabase = {
        "VIDEO_GENERATOR_STORE": "supabase",
        "SUPABASE_URL": supabase_stack.url,
        "SUPABASE_SERVICE_ROLE_KEY": supabase_stack.service_key,
    }
    worker_data = tmp_path / "worker-data"
    prefect_stack.start_worker(
        "queue-photos",
        work_queue="queue-photos",
        env=supabase | {"VIDEO_GENERATOR_DATA_DIR": str(worker_data)},
    )
    photos = [make_photo(tmp_path / "scene.jpg", "JPEG", 4.5), make_photo(tmp_path / "scene.png", "PNG", 5.0)]
    job_id, path = job_file(tmp_path)
    job = json.loads(path.read_text())
    for prompt, photo in zip(job["clip_prompts"], photos, strict=True):
        prompt["scene_reference_url"] = photo.path.name  # relative to the job file, as a user writes it
    path.write_text(json.dumps(job))
    cli_data = {"VIDEO_GENERATOR_DATA_DIR": str(tmp_path / "cli-data")}
    prefect_stack.run_cli(
        "video-generator", "submit", str(path), "--model", "veo-3.1", env=supabase | cli_data
    )

    run = prefect_stack.run_deployment(QUEUE, {"max_jobs": 10}, work_queue_name="queue-photos")

    assert run.state is not None and run.state.message == "1 job: 1 succeeded", prefect_stack.flow_run_logs(
        run.id
    )
    with prefect_stack.client() as client:
        [subflow] = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"video-clips-{job_id}"]))
        )
    assert len(json.dumps(subflow.parameters)) < 64 * 1024
    scenes = [prompt["scene_reference_url"] for prompt in subflow.parameters["job"]["clip_prompts"]]
    assert scenes == [photo.reference for photo in photos]
    monkeypatch.setenv("SUPABASE_URL", supabase_stack.url)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", supabase_stack.service_key)
    store = SupabaseStore.from_settings(Settings())
    row = store.queued_job(job_id)
    store.close()
    assert row is not None and len(json.dumps(row.job)) < 64 * 1024
    read_back = [
        r
        for r in supabase_stack.storage.requests
        if r.operation == "download" and r.bucket == REFERENCE_BUCKET
    ]
    assert {r.path.rpartition("clip-references/")[2] for r in read_back} >= {p.object_path for p in photos}
    cached = {p.name for p in (worker_data / "cache" / "references").iterdir()}
    assert cached == {f"sha256-{hashlib.sha256(p.data).hexdigest()}" for p in photos}


def test_cancelling_a_queue_run_stops_its_jobs_and_queues_them_again(
    prefect_stack: PrefectStack, tmp_path: Path
) -> None:
    """Two jobs in flight at once on a process worker, their predictions hung; a cancel through the API (as
    the UI's Cancel button does) cancels the predictions, marks both subflows cancelled and gives both
    claims back at once, not at lease expiry."""
    tag = uuid4().hex
    data_dir = tmp_path / "queue-cancel-data"
    with FakeReplicateServer(token="queue-cancel", latency_s=0.2) as fake:
        fake.add_fault(Fault(kind="hang", match=tag, times=-1))
        env = {
            "VIDEO_GENERATOR_PROVIDER": "replicate",
            "REPLICATE_API_TOKEN": "queue-cancel",
            "REPLICATE_BASE_URL": fake.base_url,
            "REPLICATE_POLL_INTERVAL": "0.2",
            "VIDEO_GENERATOR_PREDICTION_LIMIT": "",
            "VIDEO_GENERATOR_DATA_DIR": str(data_dir),
            "VIDEO_GENERATOR_QUEUE_JOBS_AT_ONCE": "2",
        }
        prefect_stack.start_worker("queue-cancel", work_queue="queue-cancel", env=env)
        jobs = [job_file(tmp_path, prompt=f"{tag} a hung clip")[0] for _ in range(2)]
        for job_id in jobs:
            submitted = prefect_stack.run_cli(
                "video-generator", "submit", str(tmp_path / f"{job_id}.json"), "--model", "veo-3.1", env=env
            )
            assert "queued job" in submitted.stdout
        run = prefect_stack.create_flow_run(QUEUE, {"max_jobs": 10}, work_queue_name="queue-cancel")
        deadline = time.monotonic() + 120
        while len([p for p in fake.predictions if tag in p["input"]["prompt"]]) < 4:  # both jobs' clips
            assert time.monotonic() < deadline, prefect_stack.flow_run_logs(run.id)
            time.sleep(0.2)

        with prefect_stack.client() as client:
            client.set_flow_run_state(run.id, Cancelling(message="cancelled by the test"), force=True)
        ended = prefect_stack.wait_for_flow_run(run.id, timeout=120)

        assert ended.state is not None and ended.state.is_cancelled(), prefect_stack.flow_run_logs(run.id)
        statuses = [p["status"] for p in fake.predictions if tag in p["input"]["prompt"]]
        assert statuses == ["canceled"] * 4, (statuses, prefect_stack.flow_run_logs(run.id))
    store = LocalStore(data_dir)
    for job_id in jobs:
        row = store.queued_job(job_id)
        assert row is not None and (row.status, row.attempts, row.claim_token) == ("queued", 1, None), row
        with prefect_stack.client() as client:
            [subflow] = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"video-clips-{job_id}"]))
            )
        assert subflow.state is not None and subflow.state.is_cancelled(), subflow.state
