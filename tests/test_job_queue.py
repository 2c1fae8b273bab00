"""The job queue, one contract for both stores: the local store (SQLite) and the Supabase store (the
migration's functions on real PostgreSQL, through real PostgREST). Leases are short and sleeps small."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from uuid import UUID, uuid4

import httpx
import pytest
from postgrest.exceptions import APIError

from clipgen.backends import close_quietly, open_store
from clipgen.errors import GenerationError, JobBusy, QueueError
from clipgen.settings import Settings
from clipgen.stores.base import ClipRecord
from clipgen.stores.local import _MIGRATIONS, DB_FILENAME, SCHEMA_VERSION, LocalStore
from clipgen.stores.queue import JobQueue, QueuedJob
from supabase import Client, ClientOptions, create_client
from tests.conftest import SupabaseStack
from tests.stack.fixtures import SupabaseDb

REPO = Path(__file__).resolve().parent.parent
JOB: dict[str, Any] = {
    "job_id": "ignored-by-the-store",
    "clip_prompts": [{"clip_index": 0, "prompt": "a fox, \u00e9t\u00e9", "duration": 5.0, "refs": [1, None]}],
}
OPTIONS: dict[str, Any] = {"model": "veo-3.1", "aspect_ratio": "16:9", "concurrency": 2}
# Time the two clocks may disagree by (PostgreSQL's now() is the transaction's start) plus slow CI.
SLACK = timedelta(seconds=2)


@pytest.fixture(params=["local", "supabase"])
def queue(request: pytest.FixtureRequest, data_dir: Path) -> Iterator[JobQueue]:
    if request.param == "supabase":
        request.getfixturevalue("supabase_env")
        # The database is shared by the whole session: claims take the oldest job of anyone's, so each test
        # starts from an empty queue.
        db: SupabaseDb = request.getfixturevalue("supabase_db")
        db.postgres.psql("delete from public.video_jobs")
    opened = open_store(request.param, Settings())
    yield cast(JobQueue, opened)
    close_quietly(opened)


def job(n: int) -> dict[str, Any]:
    return {**JOB, "n": n}


def claimed(queue: JobQueue, worker: str = "w1", lease: float = 30.0) -> QueuedJob:
    got = queue.claim_job(worker, lease)
    assert got is not None, "nothing was claimed"
    return got


def near(value: datetime | None, expected: datetime) -> bool:
    return value is not None and value.tzinfo is not None and abs(value - expected) < SLACK


def now() -> datetime:
    return datetime.now(UTC)


def test_enqueue_and_read_back(queue: JobQueue) -> None:
    job_id, bare_id = uuid4(), uuid4()
    queued = queue.enqueue_job(job_id, JOB, OPTIONS)
    assert queue.queued_job(job_id) == queued
    assert (queued.job_id, queued.job, queued.options) == (job_id, JOB, OPTIONS)
    assert (queued.status, queued.attempts, queued.max_attempts, queued.last_error) == ("queued", 0, 3, None)
    assert (queued.claim_token, queued.claimed_by, queued.claimed_at, queued.lease_expires_at) == (None,) * 4
    assert all(near(t, now()) for t in (queued.available_at, queued.created_at, queued.updated_at))

    bare = queue.enqueue_job(bare_id, {"clip_prompts": []}, None, max_attempts=5)
    assert (bare.options, bare.max_attempts) == (None, 5)
    assert queue.queued_job(bare_id) == bare
    assert queue.queued_job(uuid4()) is None
    with pytest.raises(ValueError):
        queue.enqueue_job(uuid4(), JOB, None, max_attempts=0)


def test_claims_take_the_oldest_job_and_record_the_claim(queue: JobQueue) -> None:
    ids = [uuid4() for _ in range(3)]
    for n, job_id in enumerate(ids):
        queue.enqueue_job(job_id, job(n), None)
    before = now()
    first = claimed(queue, "worker-a", lease=30)
    assert (first.job_id, first.job, first.status, first.attempts) == (ids[0], job(0), "running", 1)
    assert first.claimed_by == "worker-a" and first.claim_token is not None
    assert near(first.claimed_at, before) and near(first.lease_expires_at, before + timedelta(seconds=30))
    assert first.claimed_at is not None and first.available_at <= first.claimed_at
    assert queue.queued_job(ids[0]) == first

    second, third = claimed(queue, "worker-b"), claimed(queue, "worker-c")
    assert [second.job_id, third.job_id] == ids[1:]
    assert len({first.claim_token, second.claim_token, third.claim_token}) == 3
    assert queue.claim_job("worker-d", 30) is None  # all three run under live leases


def test_nothing_to_claim_when_empty_or_not_yet_available(queue: JobQueue) -> None:
    assert queue.claim_job("w", 1) is None
    job_id = uuid4()
    queue.enqueue_job(job_id, JOB, None)
    first = claimed(queue)
    assert first.claim_token is not None
    assert queue.finish_job(job_id, first.claim_token, succeeded=False, error="429", retry_after_seconds=60)
    waiting = queue.queued_job(job_id)
    assert waiting is not None and waiting.status == "queued"
    assert near(waiting.available_at, now() + timedelta(seconds=60))
    assert queue.claim_job("w", 1) is None


def claim_all(queue: JobQueue, worker: str) -> list[UUID]:
    got: list[UUID] = []
    while (item := queue.claim_job(worker, 30)) is not None:
        got.append(item.job_id)
    return got


def test_concurrent_claimers_never_get_the_same_job(queue: JobQueue) -> None:
    ids = [uuid4() for _ in range(12)]
    for n, job_id in enumerate(ids):
        queue.enqueue_job(job_id, job(n), None)
    results: dict[str, list[UUID]] = {}
    start = threading.Barrier(6)

    def worker(name: str) -> None:
        start.wait()
        results[name] = claim_all(queue, name)

    threads = [threading.Thread(target=worker, args=(f"t{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    every = [job_id for got in results.values() for job_id in got]
    assert len(results) == 6
    assert sorted(every) == sorted(ids)  # each job exactly once
    for name, got in results.items():
        for job_id in got:
            row = queue.queued_job(job_id)
            assert row is not None and (row.claimed_by, row.attempts) == (name, 1)


def test_local_claimers_in_several_processes_never_get_the_same_job(tmp_path: Path) -> None:
    """SQLite locks per process: threads of one process are not enough to prove the claim is atomic."""
    store = LocalStore(tmp_path / "data")
    ids = {str(uuid4()) for _ in range(40)}
    for job_id in sorted(ids):
        store.enqueue_job(UUID(job_id), JOB, None)
    go = tmp_path / "go"
    script = textwrap.dedent(
        """
        import json, sys, time
        from pathlib import Path
        from clipgen.stores.local import LocalStore
        data, go, ready, name = sys.argv[1:]
        store = LocalStore(Path(data))
        Path(ready).touch()
        while not Path(go).exists():
            time.sleep(0.002)
        got = []
        while (item := store.claim_job(name, 30)) is not None:
            got.append(str(item.job_id))
            time.sleep(0.005)  # the work: the lock is free meanwhile, so every process gets its turn
            assert store.finish_job(item.job_id, item.claim_token, succeeded=True) == "succeeded"
        print(json.dumps(got))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs, ready_files = [], []
    for i in range(4):
        ready = tmp_path / f"ready-{i}"
        ready_files.append(ready)
        command = [sys.executable, "-c", script, str(tmp_path / "data"), str(go), str(ready), f"p{i}"]
        procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    try:
        deadline = time.monotonic() + 60
        while not all(r.exists() for r in ready_files):
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            assert time.monotonic() < deadline, "the claimer processes did not start"
            time.sleep(0.01)
        go.touch()
        outputs = [p.communicate(timeout=60) for p in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()
    by_process = [json.loads(out) for out, _ in outputs]
    every = [job_id for got in by_process for job_id in got]
    assert sorted(every) == sorted(ids)
    assert sum(1 for got in by_process if got) >= 2, "the processes did not overlap: not a race"


def test_an_expired_claim_is_taken_over_and_the_old_token_stops_holding(queue: JobQueue) -> None:
    job_id = uuid4()
    queue.enqueue_job(job_id, JOB, None)
    first = claimed(queue, "slow", lease=0.6)
    assert queue.claim_job("other", 30) is None  # live lease: not claimable
    time.sleep(0.8)
    second = claimed(queue, "other", lease=30)
    assert (second.job_id, second.attempts, second.claimed_by) == (job_id, 2, "other")
    assert second.status == "running"
    assert first.claim_token is not None and second.claim_token not in (None, first.claim_token)
    assert queue.renew_claim(job_id, first.claim_token, 30) is False
    assert queue.finish_job(job_id, first.claim_token, succeeded=True) is None
    assert queue.queued_job(job_id) == second  # the stale worker changed nothing
    assert second.claim_token is not None
    assert queue.finish_job(job_id, second.claim_token, succeeded=True) == "succeeded"


def test_renew_extends_the_lease(queue: JobQueue) -> None:
    job_id = uuid4()
    queue.enqueue_job(job_id, JOB, None)
    first = claimed(queue, lease=0.4)
    assert first.claim_token is not None and first.lease_expires_at is not None
    assert queue.renew_claim(job_id, first.claim_token, 30) is True
    renewed = queue.queued_job(job_id)
    assert renewed is not None and renewed.lease_expires_at is not None
    assert near(renewed.lease_expires_at, now() + timedelta(seconds=30))
    assert (renewed.claim_token, renewed.attempts) == (first.claim_token, 1)
    time.sleep(0.6)  # past the first lease
    assert queue.claim_job("other", 30) is None
    assert queue.renew_claim(job_id, uuid4(), 30) is False
    assert queue.renew_claim(uuid4(), first.claim_token, 30) is False


def test_finish_success_and_failure(queue: JobQueue) -> None:
    ok_id, bad_id = uuid4(), uuid4()
    queue.enqueue_job(ok_id, job(0), None)
    queue.enqueue_job(bad_id, job(1), None)
    ok, bad = claimed(queue, "w-ok"), claimed(queue, "w-bad")
    assert ok.claim_token is not None and bad.claim_token is not None
    assert queue.finish_job(ok_id, ok.claim_token, succeeded=True) == "succeeded"
    # No retry delay: a failure is final even with attempts left.
    assert queue.finish_job(bad_id, bad.claim_token, succeeded=False, error="content rejected") == "failed"

    done, failed = queue.queued_job(ok_id), queue.queued_job(bad_id)
    assert done is not None and failed is not None
    assert (done.status, done.last_error) == ("succeeded", None)
    assert (done.claim_token, done.lease_expires_at) == (None, None)
    assert (done.claimed_by, done.claimed_at) == ("w-ok", ok.claimed_at)  # kept for the record
    assert (failed.status, failed.last_error, failed.claim_token) == ("failed", "content rejected", None)
    assert queue.finish_job(ok_id, ok.claim_token, succeeded=False) is None  # the claim has ended
    assert queue.claim_job("w", 30) is None


def test_a_failure_with_a_delay_is_retried_until_attempts_run_out(queue: JobQueue) -> None:
    job_id = uuid4()
    queue.enqueue_job(job_id, JOB, None, max_attempts=2)
    first = claimed(queue)
    assert first.claim_token is not None
    status = queue.finish_job(job_id, first.claim_token, succeeded=False, error="503", retry_after_seconds=1)
    assert status == "queued"
    waiting = queue.queued_job(job_id)
    assert waiting is not None
    assert (waiting.last_error, waiting.claim_token, waiting.attempts) == ("503", None, 1)
    assert near(waiting.available_at, now() + timedelta(seconds=1))
    assert queue.claim_job("w", 30) is None  # not before available_at
    time.sleep(1.2)
    second = claimed(queue, "w2")
    assert (second.job_id, second.attempts) == (job_id, 2) and second.claim_token is not None
    # The last attempt: a retry delay no longer queues it again.
    status = queue.finish_job(job_id, second.claim_token, succeeded=False, error="503", retry_after_seconds=0)
    assert status == "failed"
    assert queue.claim_job("w", 30) is None


def test_an_expired_claim_with_no_attempts_left_is_abandoned(queue: JobQueue) -> None:
    job_id, later_id = uuid4(), uuid4()
    queue.enqueue_job(job_id, JOB, None, max_attempts=1)
    first = claimed(queue, lease=0.2)
    queue.enqueue_job(later_id, job(1), None)
    time.sleep(0.4)
    # The claim passes over the abandoned job (and marks it failed) to the next one.
    assert claimed(queue, "w2").job_id == later_id
    row = queue.queued_job(job_id)
    assert row is not None
    assert (row.status, row.last_error) == ("failed", "abandoned: lease expired after 1 attempts")
    assert (row.claim_token, row.lease_expires_at, row.attempts) == (None, None, 1)
    assert first.claim_token is not None
    assert queue.finish_job(job_id, first.claim_token, succeeded=True) is None
    assert queue.claim_job("w3", 30) is None


def test_enqueue_refuses_a_job_running_under_a_live_lease(queue: JobQueue) -> None:
    job_id = uuid4()
    queue.enqueue_job(job_id, JOB, None)
    running = claimed(queue, lease=30)
    with pytest.raises(JobBusy, match="is running") as busy:
        queue.enqueue_job(job_id, job(2), OPTIONS)
    # A refusal of the queue, not a failed clip attempt: it has its own branch of the error tree.
    assert isinstance(busy.value, QueueError) and not isinstance(busy.value, GenerationError)
    assert str(job_id) in str(busy.value)
    assert queue.queued_job(job_id) == running  # nothing changed


def test_enqueue_again_resets_a_finished_or_abandoned_job(queue: JobQueue) -> None:
    done_id, failed_id, stale_id = uuid4(), uuid4(), uuid4()
    for job_id in (done_id, failed_id, stale_id):
        queue.enqueue_job(job_id, JOB, None)
    done, failed, stale = claimed(queue), claimed(queue), claimed(queue, lease=0.2)
    assert done.claim_token and failed.claim_token and stale.claim_token
    queue.finish_job(done_id, done.claim_token, succeeded=True)
    queue.finish_job(failed_id, failed.claim_token, succeeded=False, error="boom")
    time.sleep(0.4)  # stale's lease expires: it may be queued again without waiting for the takeover

    for job_id, was in ((done_id, done), (failed_id, failed), (stale_id, stale)):
        again = queue.enqueue_job(job_id, job(9), OPTIONS, max_attempts=4)
        assert (again.status, again.attempts, again.max_attempts, again.last_error) == ("queued", 0, 4, None)
        assert (again.job, again.options) == (job(9), OPTIONS)
        assert (again.claim_token, again.claimed_by, again.lease_expires_at) == (None, None, None)
        assert again.created_at == was.created_at and near(again.available_at, now())
    assert queue.finish_job(stale_id, stale.claim_token, succeeded=True) is None

    # A still-queued job: its job and options are replaced.
    replaced = queue.enqueue_job(done_id, job(10), None)
    assert (replaced.job, replaced.options, replaced.status) == (job(10), None, "queued")
    assert sorted(claim_all(queue, "w")) == sorted([done_id, failed_id, stale_id])


def test_an_app_queues_a_job_with_a_plain_insert(queue: JobQueue, request: pytest.FixtureRequest) -> None:
    job_id = uuid4()
    insert = app_insert(queue, request)
    insert({"job_id": str(job_id), "job": JOB})
    row = queue.queued_job(job_id)
    assert row is not None
    assert (row.status, row.attempts, row.max_attempts, row.options, row.job) == ("queued", 0, 3, None, JOB)
    assert near(row.available_at, now()) and near(row.created_at, now())
    got = claimed(queue, "w")
    assert (got.job_id, got.attempts, got.job) == (job_id, 1, JOB)

    # A job that is not a JSON object is refused at the insert, not handed to a worker.
    with pytest.raises((sqlite3.IntegrityError, sqlite3.OperationalError, httpx.HTTPStatusError)):
        insert({"job_id": str(uuid4()), "job": ["not", "an", "object"]})


def app_insert(queue: JobQueue, request: pytest.FixtureRequest) -> Callable[[dict[str, Any]], None]:
    """How an app outside this project queues a job: a bare INSERT of job_id and job."""
    if isinstance(queue, LocalStore):
        queue.queued_job(uuid4())  # the worker has created the database

        def insert(row: dict[str, Any]) -> None:
            with closing(sqlite3.connect(queue.db_path)) as conn, conn:
                conn.execute(
                    "INSERT INTO video_jobs (job_id, job) VALUES (?, ?)",
                    (row["job_id"], json.dumps(row["job"])),
                )

        return insert
    stack: SupabaseStack = request.getfixturevalue("supabase_env")

    def post(row: dict[str, Any]) -> None:
        headers = {"apikey": stack.service_key, "Authorization": f"Bearer {stack.service_key}"}
        httpx.post(
            f"{stack.url}/rest/v1/video_jobs", json=row, headers=headers, timeout=10
        ).raise_for_status()

    return post


def test_an_old_local_database_is_upgraded_in_place(tmp_path: Path) -> None:
    job_id = uuid4()
    with closing(sqlite3.connect(tmp_path / DB_FILENAME)) as conn, conn:
        for statement in _MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO clips (job_id, clip_index, status, model, created_at, updated_at) "
            "VALUES (?, 0, 'success', 'm', '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00')",
            (str(job_id),),
        )
        conn.execute("PRAGMA user_version = 1")
    store = LocalStore(tmp_path)
    assert store.claim_job("w", 1) is None
    store.enqueue_job(job_id, JOB, None)
    assert claimed(store).job_id == job_id
    [clip] = store.clip_records(job_id)  # the version-1 row is still there
    assert clip.status == "success" and clip.created_at == datetime(2026, 1, 1, tzinfo=UTC)
    store.upsert_clip(
        ClipRecord(
            job_id=job_id, clip_index=1, status="failed", model="m", metadata={"k": 1}, failed_for_good=True
        )
    )
    assert [(c.metadata, c.failed_for_good) for c in store.clip_records(job_id)] == [
        ({}, False),
        ({"k": 1}, True),
    ]  # columns of later versions
    with closing(sqlite3.connect(tmp_path / DB_FILENAME)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


@contextmanager
def client(stack: SupabaseStack, key: str) -> Iterator[Client]:
    with httpx.Client(timeout=10) as http:
        yield create_client(stack.url, key, ClientOptions(httpx_client=http, postgrest_client_retry=False))


def test_supabase_anon_can_neither_see_nor_claim_jobs(
    supabase_env: SupabaseStack, supabase_db: SupabaseDb
) -> None:
    store = open_store("supabase", Settings())
    try:
        queue = cast(JobQueue, store)
        job_id = uuid4()
        queue.enqueue_job(job_id, JOB, None)  # a row exists: an empty answer means "may not see it"
        with client(supabase_env, supabase_env.anon_key) as anon:
            try:
                assert anon.table("video_jobs").select("*").execute().data == []
            except APIError as denied:
                assert denied.code == "42501"
            with pytest.raises(APIError) as refused:
                anon.table("video_jobs").insert({"job_id": str(uuid4()), "job": JOB}).execute()
            assert refused.value.code == "42501"
            for name, params in (
                ("claim_video_job", {"p_worker": "anon", "p_lease_seconds": 30}),
                (
                    "enqueue_video_job",
                    {"p_job_id": str(job_id), "p_job": {}, "p_options": None, "p_max_attempts": 3},
                ),
                (
                    "renew_video_job",
                    {"p_job_id": str(job_id), "p_token": str(uuid4()), "p_lease_seconds": 30},
                ),
            ):
                with pytest.raises(APIError) as refused:
                    anon.rpc(name, params).execute()
                assert refused.value.code == "42501", name
        row = queue.queued_job(job_id)
        assert row is not None and (row.status, row.attempts, row.job) == ("queued", 0, JOB)
    finally:
        close_quietly(store)
        supabase_db.postgres.psql("delete from public.video_jobs")  # no job left for other tests to claim


def test_supabase_video_jobs_is_locked_down(supabase_db: SupabaseDb) -> None:
    psql = supabase_db.postgres.psql
    assert psql("select relrowsecurity from pg_class where oid = 'public.video_jobs'::regclass") == "t"
    assert psql("select count(*) from pg_policies where tablename = 'video_jobs'") == "0"
    all_privileges = "SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER"
    for role in ("anon", "authenticated"):
        assert psql(f"select has_table_privilege('{role}', 'public.video_jobs', '{all_privileges}')") == "f"
    for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE"):
        assert psql(f"select has_table_privilege('service_role', 'public.video_jobs', '{privilege}')") == "t"
    functions = (
        "public.enqueue_video_job(uuid, jsonb, jsonb, integer)",
        "public.claim_video_job(text, double precision)",
        "public.renew_video_job(uuid, uuid, double precision)",
        "public.finish_video_job(uuid, uuid, boolean, text, double precision)",
    )
    for function in functions:
        for role, allowed in (("service_role", "t"), ("anon", "f"), ("authenticated", "f")):
            held = psql(f"select has_function_privilege('{role}', '{function}', 'execute')")
            assert held == allowed, (role, function)
        # Nor PUBLIC (grantee 0), which every function is granted to unless revoked.
        public = f"select count(*) from pg_proc, aclexplode(proacl) a where oid = '{function}'::regprocedure"
        assert psql(public + " and a.grantee = 0") == "0", function
        config = psql(
            f"select proconfig::text, prosecdef from pg_proc where oid = '{function}'::regprocedure"
        )
        assert config == '{"search_path=\\"\\""}|f', (function, config)
