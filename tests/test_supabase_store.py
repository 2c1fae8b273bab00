"""The Supabase store end to end: the example job against real PostgreSQL, PostgREST and Storage behind one
base URL, through supabase-py exactly as production builds it."""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from postgrest.exceptions import APIError
from storage3.exceptions import StorageApiError

from clipgen.backends import register_provider
from clipgen.errors import PermanentError, PublicBucket
from clipgen.server import create_app
from clipgen.settings import Settings
from clipgen.stores.base import REFERENCE_BUCKET, THUMBNAIL_BUCKET, VIDEO_BUCKET
from clipgen.stores.supabase import SupabaseStore
from commands.cli import main
from supabase import Client, ClientOptions, create_client
from tests.conftest import EXAMPLE_JOB, SupabaseStack
from tests.doubles import ScriptedProvider
from tests.stack.fixtures import SupabaseDb, migration_files, prepare_database
from tests.stack.gateway import ServerThread
from tests.stack.postgres import PsqlError

JOB_ID = "7d1c2a9e-4b6f-4f0e-9a51-3c2b8e1f0a66"
TABLES = ("clips", "clip_thumbnails", "job_events")

pytestmark = pytest.mark.usefixtures("prefect_server", "supabase_env")


@pytest.fixture(autouse=True)
def fresh_example_job(supabase_db: SupabaseDb) -> None:
    """Every test runs the example job from scratch: a job already stored is reused, not generated again."""
    for table in (*TABLES, "clip_predictions"):
        supabase_db.postgres.psql(f"delete from public.{table} where job_id = '{JOB_ID}'")


def run_example(tmp_path: Path, *flags: str) -> dict[str, Any]:
    output = tmp_path / "clips.json"
    assert main(["run", str(EXAMPLE_JOB), "--store", "supabase", "--output", str(output), *flags]) == 0
    result: dict[str, Any] = json.loads(output.read_text())
    return result


@contextmanager
def supabase(url: str, key: str) -> Iterator[Client]:
    """A client built as production builds it (own httpx client: no deprecated options), closed after."""
    with httpx.Client(timeout=10) as http:
        yield create_client(url, key, ClientOptions(httpx_client=http, postgrest_client_retry=False))


def rows(stack: Any, table: str) -> list[dict[str, Any]]:
    with supabase(stack.url, stack.service_key) as client:
        # Ordered: without it PostgREST's rows come in no promised order.
        query = client.table(table).select("*").eq("job_id", JOB_ID).order("id")
        data = query.execute().data
    return cast(list[dict[str, Any]], data)  # PostgREST's rows; postgrest-py types them as any JSON


def test_example_job_lands_in_both_buckets_and_all_three_tables(supabase_stack: Any, tmp_path: Path) -> None:
    result = run_example(tmp_path)
    storage = supabase_stack.storage

    for clip in result["clips"]:
        index = clip["clip_index"]
        video = storage.object("video-clips", f"{JOB_ID}/clip_{index}.mp4")
        thumbnail = storage.object("clip-thumbnails", f"{JOB_ID}/clip_{index}_thumbnail.jpg")
        assert video.content_type == "video/mp4"
        assert thumbnail.content_type == "image/jpeg"
        assert clip["storage_path"] == f"{JOB_ID}/clip_{index}.mp4"
        # The signed links download the very bytes that were stored.
        downloaded = httpx.get(clip["video_url"], timeout=10)
        assert downloaded.status_code == 200
        assert downloaded.headers["content-type"] == "video/mp4"
        assert hashlib.md5(downloaded.content).hexdigest() == video.etag  # Storage's eTag: the bytes' MD5
        assert httpx.get(clip["thumbnail_url"], timeout=10).content[:2] == b"\xff\xd8"
    assert all(not bucket.public for bucket in storage.buckets.values())

    assert len(rows(supabase_stack, "clips")) == 6
    assert {row["status"] for row in rows(supabase_stack, "clips")} == {"success"}
    assert len(rows(supabase_stack, "clip_thumbnails")) == 6
    events = [row["event"] for row in rows(supabase_stack, "job_events")]
    assert events[0] == "video_generation_start" and events[-1] == "video_generation_complete"


def test_rerunning_a_job_upserts_instead_of_duplicating(supabase_stack: Any, tmp_path: Path) -> None:
    run_example(tmp_path)
    run_example(tmp_path)
    storage = supabase_stack.storage
    assert len(rows(supabase_stack, "clips")) == 6
    assert len(rows(supabase_stack, "clip_thumbnails")) == 6
    videos = [key for key in storage.objects if key[0] == "video-clips" and key[1].startswith(JOB_ID)]
    assert len(videos) == 6  # overwritten in place, never a second object


def test_a_storage_outage_mid_job_loses_nothing_and_generates_nothing_extra(
    supabase_stack: Any, tmp_path: Path
) -> None:
    provider = ScriptedProvider()
    register_provider("scripted-supabase", lambda settings: provider)
    # One clip at a time, so the outage deterministically fails the first clip's first two attempts (an
    # upload is sent once per attempt): the clip task retries, and must store the clip it already has
    # instead of generating it again.
    supabase_stack.storage.fail_next(2, status=503, bucket="video-clips", operation="upload")
    result = run_example(tmp_path, "--provider", "scripted-supabase", "--concurrency", "1")

    assert result["successful_clips"] == 6
    assert sorted(provider.calls.values()) == [1] * 6  # one generation per clip, none repeated
    assert len(rows(supabase_stack, "clips")) == 6
    # The clip task retried and stored the clip it had.
    retries = [
        row["data"] for row in rows(supabase_stack, "job_events") if row["event"] == "video_generation_retry"
    ]
    assert retries and all("Supabase Storage 503" in retry["error"] for retry in retries)


def test_an_upload_is_retried_by_the_clip_task_only_not_also_by_the_store(
    supabase_stack: Any, tmp_path: Path
) -> None:
    """A Storage outage meets each clip's upload once per attempt: 3 sends in all, not 3 tries in the store
    times 3 attempts of the task (9 before, when both retried it)."""
    register_provider("scripted-supabase", lambda settings: ScriptedProvider())
    storage = supabase_stack.storage
    earlier = len(storage.requests)  # the session's other tests upload the same job's clips
    # One clip at a time: the first clip's uploads meet every fault, then the outage is over.
    storage.fail_next(9, status=503, bucket="video-clips", operation="upload")
    result = run_example(tmp_path, "--provider", "scripted-supabase", "--concurrency", "1")

    first = f"{JOB_ID}/clip_0.mp4"
    uploads = [r for r in storage.requests[earlier:] if r.operation == "upload" and r.path.endswith(first)]
    assert [r.status for r in uploads] == [503] * 3  # the task's three attempts, one send each
    [clip] = [clip for clip in result["clips"] if clip["clip_index"] == 0]
    assert clip["status"] == "failed" and "Supabase Storage 503" in clip["error"]


def test_the_anon_key_reads_and_writes_nothing(supabase_stack: Any, tmp_path: Path) -> None:
    run_example(tmp_path)
    with supabase(supabase_stack.url, supabase_stack.anon_key) as anon:
        assert_anon_is_refused(anon)
    # The service key does both.
    assert len(rows(supabase_stack, "clips")) == 6


def assert_anon_is_refused(anon: Client) -> None:
    for table in TABLES:
        try:
            assert anon.table(table).select("*").execute().data == []
        except APIError as denied:
            assert denied.code == "42501"
        with pytest.raises(APIError) as refused:
            anon.table(table).insert({"job_id": JOB_ID}).execute()
        assert refused.value.code == "42501"
    with pytest.raises(StorageApiError):
        anon.storage.from_("video-clips").create_signed_url(f"{JOB_ID}/clip_0.mp4", 60)
    with pytest.raises(StorageApiError):
        anon.storage.from_("video-clips").upload(f"{JOB_ID}/evil.mp4", b"x", {"content-type": "video/mp4"})


def test_serve_over_supabase_links_to_signed_storage_urls(
    supabase_stack: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_example(tmp_path)
    monkeypatch.setenv("VIDEO_GENERATOR_STORE", "supabase")
    with ServerThread(create_app(Settings()), lifespan="on") as server:
        response = httpx.get(f"{server.base_url}/jobs/{JOB_ID}", timeout=10)
    assert response.status_code == 200, response.text
    status = response.json()
    assert status["state"] == "completed" and status["completed"] == 6
    for clip in status["clips"]:
        assert clip["video_url"].startswith(f"{supabase_stack.url}/storage/v1/object/sign/video-clips/")
        assert httpx.get(clip["video_url"], timeout=10).content[4:8] == b"ftyp"
        assert httpx.get(clip["thumbnail_url"], timeout=10).content[:2] == b"\xff\xd8"


def test_the_anon_key_cannot_call_the_paid_work_functions(supabase_stack: Any) -> None:
    job = {"p_job_id": JOB_ID, "p_clip_index": 0, "p_owner": "evil"}
    calls: dict[str, dict[str, Any]] = {
        "take_clip_lease": {**job, "p_seconds": 60, "p_model": "m"},
        "renew_clip_lease": {**job, "p_seconds": 60},
        "release_clip_lease": job,
        "reserve_prediction": {"p_record": {"job_id": JOB_ID}, "p_budget_usd": None},
        "resolve_prediction_intent": {"p_intent_id": "intent:x", "p_record": {"job_id": JOB_ID}},
    }
    with supabase(supabase_stack.url, supabase_stack.anon_key) as anon:
        for name, params in calls.items():
            with pytest.raises(APIError) as refused:
                anon.rpc(name, params).execute()
            assert refused.value.code == "42501", name
    assert rows(supabase_stack, "clips") == [] and rows(supabase_stack, "clip_predictions") == []


def test_a_project_at_the_previous_migration_is_upgraded_in_place(supabase_db: SupabaseDb) -> None:
    """20261202000000_paid_work.sql on a project that has data: clips keep their rows (create_sent_at
    goes), the ledger keeps its rows with 'unused' renamed 'abandoned', and the new statuses are allowed."""
    cluster, db = supabase_db.postgres, f"upgrade_{uuid.uuid4().hex[:8]}"
    earlier = [path for path in migration_files() if path.name < "20261202000000"]
    later = [path for path in migration_files() if path.name >= "20261202000000"]
    cluster.psql(f"create database {db}")
    try:
        prepare_database(cluster, db)
        for path in earlier:
            cluster.psql(file=path, user="postgres", db=db)
        cluster.psql(
            "insert into public.clips (job_id, clip_index, status, model, prediction_id, attempts, cost, "
            f"create_sent_at, created_at) values ('{JOB_ID}', 0, 'success', 'veo-3.1', 'p1', 2, 0.4, now(), "
            "'2026-11-21T00:00:00Z');"
            "insert into public.clip_predictions (prediction_id, job_id, clip_index, provider, model, "
            f"plan_fingerprint, status, cost) values ('p0', '{JOB_ID}', 0, 'replicate', 'veo-3.1', 'f', "
            f"'unused', 0.4), ('p1', '{JOB_ID}', 0, 'replicate', 'veo-3.1', 'f', 'delivered', 0.4)",
            user="postgres",
            db=db,
        )
        for path in later:
            cluster.psql(file=path, user="postgres", db=db)

        clip = cluster.psql(
            "select concat_ws(',', status, model, prediction_id, attempts, cost, "
            "created_at = '2026-11-21T00:00:00Z', metadata, failed_for_good, coalesce(lease_owner, '-')) "
            "from public.clips",
            db=db,
        )
        assert clip == "success,veo-3.1,p1,2,0.4,t,{},f,-"
        ledger = cluster.psql(
            "select string_agg(prediction_id || '=' || status, ',' order by id) from public.clip_predictions",
            db=db,
        )
        assert ledger == "p0=abandoned,p1=delivered"
        columns = cluster.psql(
            "select count(*) from information_schema.columns where table_schema = 'public' "
            "and table_name = 'clips' and column_name = 'create_sent_at'",
            db=db,
        )
        assert columns == "0"
        cluster.psql(
            "insert into public.clip_predictions (prediction_id, job_id, clip_index, provider, model, "
            f"plan_fingerprint, status) values ('intent:1', '{JOB_ID}', 1, 'replicate', 'veo-3.1', 'f', "
            "'intended')",
            user="postgres",
            db=db,
        )
        with pytest.raises(PsqlError, match="clip_predictions_status_check"):
            cluster.psql(
                "update public.clip_predictions set status = 'unused' where prediction_id = 'p1'", db=db
            )
    finally:
        cluster.psql(f"drop database {db} with (force)")


# --- the store's use of Storage, against the real server --------------------------------------------------

MB = 1024 * 1024


@pytest.fixture
def store(supabase_env: SupabaseStack) -> Iterator[SupabaseStore]:
    opened = SupabaseStore.from_settings(Settings())
    yield opened
    opened.close()


def test_a_5_mb_clip_streams_up_is_overwritten_in_place_and_downloads_in_ranges(
    store: SupabaseStore, supabase_env: SupabaseStack, tmp_path: Path
) -> None:
    source, path = tmp_path / "clip.mp4", f"{uuid.uuid4()}/clip_0.mp4"
    source.write_bytes(os.urandom(5 * MB))
    store.put_object(VIDEO_BUCKET, path, source, "video/mp4")
    # Over an existing key, as a retried upload or a rerun does: only ever with upsert (a multi-MB upload
    # without it stalls until the client's write timeout, after Storage's early 409).
    data = os.urandom(5 * MB + 1)
    source.write_bytes(data)
    stored = store.put_object(VIDEO_BUCKET, path, source, "video/mp4")

    obj = supabase_env.storage.object(VIDEO_BUCKET, path)
    assert (obj.size, obj.content_type, obj.etag) == (len(data), "video/mp4", hashlib.md5(data).hexdigest())
    assert supabase_env.storage.writes(VIDEO_BUCKET, path) == 2
    whole = httpx.get(stored.url, timeout=30)
    assert (whole.status_code, whole.headers["content-type"]) == (200, "video/mp4")
    assert whole.content == data
    part = httpx.get(stored.url, headers={"Range": "bytes=1000-1999"}, timeout=10)
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
    assert part.content == data[1000:2000]


@pytest.mark.parametrize(
    ("bucket", "name", "content_type"),
    [
        (VIDEO_BUCKET, "clip_0.mp4", "video/mp4"),
        (THUMBNAIL_BUCKET, "clip_0_thumbnail.jpg", "image/jpeg"),
        (REFERENCE_BUCKET, "photo.png", "image/png"),
        (REFERENCE_BUCKET, "photo.jpg", "image/jpeg"),
    ],
)
def test_objects_keep_the_content_type_they_were_stored_with(
    store: SupabaseStore,
    supabase_env: SupabaseStack,
    tmp_path: Path,
    bucket: str,
    name: str,
    content_type: str,
) -> None:
    source, path = tmp_path / name, f"{uuid.uuid4()}/{name}"
    source.write_bytes(b"not really " + content_type.encode())
    stored = store.put_object(bucket, path, source, content_type)
    assert supabase_env.storage.object(bucket, path).content_type == content_type
    assert httpx.get(stored.url, timeout=10).headers["content-type"] == content_type


def test_a_signed_link_expires_and_is_signed_again_from_the_object_path(
    store: SupabaseStore, supabase_env: SupabaseStack, tmp_path: Path
) -> None:
    source, path = tmp_path / "clip.mp4", f"{uuid.uuid4()}/clip_0.mp4"
    source.write_bytes(b"a clip")
    store.put_object(VIDEO_BUCKET, path, source, "video/mp4")
    with supabase(supabase_env.url, supabase_env.service_key) as client:
        short = SupabaseStore(client, signed_url_ttl_s=1).signed_url(VIDEO_BUCKET, path)
        token = parse_qs(urlsplit(short).query)["token"][0]
        claims = jwt.decode(token, options={"verify_signature": False})
        assert claims["exp"] - claims["iat"] == 1
        time.sleep(2.1)  # past the link's expiry (Storage checks `exp` with no leeway)
        expired = httpx.get(short, timeout=10)
    assert expired.status_code == 400 and expired.json()["error"] == "InvalidJWT", expired.text
    assert httpx.get(store.signed_url(VIDEO_BUCKET, path), timeout=10).content == b"a clip"


def test_a_duplicate_without_upsert_is_refused(store: SupabaseStore, tmp_path: Path) -> None:
    """Why the store always uploads with upsert: a rerun's or a retry's upload would be refused."""
    source, path = tmp_path / "clip.mp4", f"{uuid.uuid4()}/clip_0.mp4"
    source.write_bytes(b"small")  # small: a multi-MB duplicate stalls the client instead
    store.put_object(VIDEO_BUCKET, path, source, "video/mp4")
    with pytest.raises(StorageApiError) as refused:
        store._client.storage.from_(VIDEO_BUCKET).upload(path, source, {"content-type": "video/mp4"})
    assert (refused.value.status, refused.value.code) == ("409", "Duplicate")


def test_a_deleted_object_is_gone_for_the_store(store: SupabaseStore, tmp_path: Path) -> None:
    source, path = tmp_path / "clip.mp4", f"{uuid.uuid4()}/clip_0.mp4"
    source.write_bytes(b"to be deleted")
    stored = store.put_object(VIDEO_BUCKET, path, source, "video/mp4")
    store._client.storage.from_(VIDEO_BUCKET).remove([path])  # as an operator would: the store never deletes
    assert not store.has_object(VIDEO_BUCKET, path)
    with pytest.raises(PermanentError, match="Supabase Storage 404"):
        store.signed_url(VIDEO_BUCKET, path)
    assert httpx.get(stored.url, timeout=10).status_code == 400  # Storage's 404, rendered with HTTP 400


def test_missing_buckets_are_created_private_and_a_public_one_is_refused(
    supabase_env: SupabaseStack, tmp_path: Path
) -> None:
    supabase_env.storage.reset()
    source = tmp_path / "clip.mp4"
    source.write_bytes(b"a clip")
    try:
        with supabase(supabase_env.url, supabase_env.service_key) as client:
            SupabaseStore(client, signed_url_ttl_s=60).put_object(
                VIDEO_BUCKET, "a/clip_0.mp4", source, "video/mp4"
            )
            assert {name: b.public for name, b in supabase_env.storage.buckets.items()} == dict.fromkeys(
                (VIDEO_BUCKET, THUMBNAIL_BUCKET, REFERENCE_BUCKET), False
            )
            client.storage.update_bucket(THUMBNAIL_BUCKET, {"public": True})
            with pytest.raises(PublicBucket, match=THUMBNAIL_BUCKET):
                SupabaseStore(client, signed_url_ttl_s=60).put_object(
                    VIDEO_BUCKET, "a/clip_1.mp4", source, "video/mp4"
                )
        assert supabase_env.storage.writes(VIDEO_BUCKET, "a/clip_1.mp4") == 0
    finally:
        supabase_env.storage.reset()
