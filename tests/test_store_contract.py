"""One contract, two stores: the local store and the Supabase store (real PostgreSQL through real PostgREST,
with the fake Storage API behind the same base URL) must behave the same, so they cannot drift."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from uuid import UUID, uuid4

import httpx
import pytest

from clipgen.backends import close_quietly, open_store
from clipgen.settings import Settings
from clipgen.stores.base import (
    THUMBNAIL_BUCKET,
    VIDEO_BUCKET,
    ClipRecord,
    ClipStore,
    ThumbnailRecord,
    clip_object_path,
    thumbnail_object_path,
)


@pytest.fixture(params=["local", "supabase"])
def store(request: pytest.FixtureRequest, data_dir: Path) -> Iterator[ClipStore]:
    if request.param == "supabase":
        request.getfixturevalue("supabase_env")
    opened = open_store(request.param, Settings())
    yield opened
    close_quietly(opened)


def read(url: str) -> bytes:
    if url.startswith("file://"):
        return Path(unquote(urlsplit(url).path)).read_bytes()
    response = httpx.get(url, timeout=10)
    response.raise_for_status()
    return response.content


def clip(job_id: UUID, index: int = 0, **fields: object) -> ClipRecord:
    return ClipRecord.model_validate(
        {"job_id": job_id, "clip_index": index, "status": "running", "model": "m", **fields}
    )


def test_objects_are_stored_at_their_path_and_overwritten(store: ClipStore, tmp_path: Path) -> None:
    job_id = uuid4()
    source = tmp_path / "clip.mp4"
    source.write_bytes(b"first version")
    path = clip_object_path(job_id, 3)
    stored = store.put_object(VIDEO_BUCKET, path, source, "video/mp4")
    assert (stored.bucket, stored.path) == (VIDEO_BUCKET, f"{job_id}/clip_3.mp4")
    assert read(stored.url) == b"first version"

    source.write_bytes(b"second version, longer")
    again = store.put_object(VIDEO_BUCKET, path, source, "video/mp4")
    assert again.path == stored.path
    assert read(again.url) == b"second version, longer"
    assert read(store.signed_url(VIDEO_BUCKET, path)) == b"second version, longer"


def test_thumbnail_objects_and_records(store: ClipStore, tmp_path: Path) -> None:
    job_id = uuid4()
    source = tmp_path / "thumb.jpg"
    source.write_bytes(b"\xff\xd8 not really a jpeg")
    path = thumbnail_object_path(job_id, 1)
    stored = store.put_object(THUMBNAIL_BUCKET, path, source, "image/jpeg")
    store.upsert_thumbnail(
        ThumbnailRecord(job_id=job_id, clip_index=1, thumbnail_path=path, thumbnail_url=stored.url)
    )
    store.upsert_thumbnail(
        ThumbnailRecord(job_id=job_id, clip_index=1, thumbnail_path=path, thumbnail_url=stored.url)
    )
    [record] = store.thumbnail_records(job_id)
    assert (record.clip_index, record.thumbnail_path) == (1, f"{job_id}/clip_1_thumbnail.jpg")
    assert record.created_at is not None


def test_clip_upsert_keeps_one_row_and_its_creation_time(store: ClipStore) -> None:
    job_id = uuid4()
    store.upsert_clip(clip(job_id, attempts=1))
    [first] = store.clip_records(job_id)
    time.sleep(0.01)
    store.upsert_clip(
        clip(job_id, status="success", attempts=2, actual_duration=5.04, cost=0.35, video_path="p")
    )
    [second] = store.clip_records(job_id)
    assert (second.status, second.attempts, second.actual_duration, second.cost) == ("success", 2, 5.04, 0.35)
    assert second.created_at == first.created_at
    assert second.updated_at is not None and first.updated_at is not None
    assert second.updated_at > first.updated_at


def test_records_are_per_job_and_ordered(store: ClipStore) -> None:
    job_id, other = uuid4(), uuid4()
    for index in (2, 0, 1):
        store.upsert_clip(clip(job_id, index))
    store.upsert_clip(clip(other, 0))
    assert [r.clip_index for r in store.clip_records(job_id)] == [0, 1, 2]
    assert all(r.job_id == job_id for r in store.clip_records(job_id))
    assert store.thumbnail_records(uuid4()) == []


def test_events_replay_after_an_id(store: ClipStore) -> None:
    job_id, other = uuid4(), uuid4()
    ids = [
        store.append_event(job_id, "e", {"n": n, "nested": {"ok": True}, "list": [1, 2]}) for n in range(5)
    ]
    store.append_event(other, "e", {})
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert [e.data["n"] for e in store.events(job_id)] == [0, 1, 2, 3, 4]
    after = store.events(job_id, after=ids[2])
    assert [e.id for e in after] == ids[3:]
    assert after[0].data == {"n": 3, "nested": {"ok": True}, "list": [1, 2]}
    assert after[0].event == "e" and after[0].job_id == job_id


def test_signing_a_missing_object_fails(store: ClipStore) -> None:
    with pytest.raises(Exception):  # noqa: B017 - each store has its own error; what matters is no link
        store.signed_url(VIDEO_BUCKET, f"{uuid4()}/clip_0.mp4")


def test_supabase_store_creates_private_buckets_once_even_when_racing(supabase_env: Any) -> None:
    stores = [open_store("supabase", Settings()) for _ in range(4)]
    supabase_env.storage.reset()  # no buckets: every store finds them missing and creates them at once
    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda s: s._ensure_buckets(), stores))
    finally:
        for store in stores:
            close_quietly(store)
    assert {name: bucket["public"] for name, bucket in supabase_env.storage.buckets.items()} == {
        "video-clips": False,
        "clip-thumbnails": False,
    }
    creates = [r for r in supabase_env.storage.requests if r.method == "POST" and r.path.endswith("/bucket")]
    assert len(creates) >= 2 and {r.status for r in creates} <= {200, 400, 409}


def test_a_follower_never_skips_an_event_while_threads_append(store: ClipStore) -> None:
    job_id = uuid4()
    writers, each = 4, 25
    seen: list[int] = []
    done = threading.Event()

    def follow() -> None:
        last = 0
        while not done.is_set() or len(seen) < writers * each:
            for event in store.events(job_id, after=last):
                seen.append(event.id)
                last = event.id
            if done.is_set() and len(store.events(job_id)) == len(seen):
                return

    def write(n: int) -> None:
        for i in range(each):
            store.append_event(job_id, "e", {"writer": n, "i": i})

    follower = threading.Thread(target=follow)
    follower.start()
    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(write, range(writers)))
    done.set()
    follower.join(timeout=60)
    assert sorted(seen) == [e.id for e in store.events(job_id)]  # every event, none skipped or repeated
    assert len(seen) == writers * each


def test_the_prediction_ledger_keeps_every_paid_request_in_order(store: ClipStore) -> None:
    from clipgen.stores.base import PredictionRecord

    job_id = uuid4()
    first = PredictionRecord(
        prediction_id=f"p-{uuid4().hex}", job_id=job_id, clip_index=1, provider="replicate", model="veo-3.1",
        plan_fingerprint="abc", run_id="run-1", cost=0.4,
    )  # fmt: skip
    second = first.model_copy(update={"prediction_id": f"p-{uuid4().hex}", "clip_index": 0})
    store.record_prediction(first)
    store.record_prediction(second)
    created = store.predictions(job_id)[0].created_at
    time.sleep(0.01)
    store.record_prediction(first.model_copy(update={"status": "delivered"}))

    rows = store.predictions(job_id)
    assert [(r.prediction_id, r.clip_index, r.status) for r in rows] == [
        (first.prediction_id, 1, "delivered"),
        (second.prediction_id, 0, "created"),
    ]
    assert rows[0].created_at == created and rows[0].updated_at is not None
    assert rows[0].updated_at > created  # type: ignore[operator]
    assert (rows[0].plan_fingerprint, rows[0].run_id, rows[0].cost, rows[0].provider) == (
        "abc", "run-1", 0.4, "replicate",
    )  # fmt: skip
    assert store.predictions(uuid4()) == []


def test_a_clip_row_keeps_the_plan_it_was_made_for(store: ClipStore) -> None:
    job_id = uuid4()
    store.upsert_clip(clip(job_id, 0, status="success", plan_fingerprint="f1"))
    assert [r.plan_fingerprint for r in store.clip_records(job_id)] == ["f1"]


def test_a_clip_row_keeps_the_intent_of_an_unanswered_create_until_cleared(store: ClipStore) -> None:
    job_id, sent_at = uuid4(), datetime(2026, 11, 21, 12, 0, 0, 250000, tzinfo=UTC)
    store.upsert_clip(clip(job_id, 0, create_sent_at=sent_at))
    assert [r.create_sent_at for r in store.clip_records(job_id)] == [sent_at]
    store.upsert_clip(clip(job_id, 0, prediction_id="p1", create_sent_at=None))
    assert [(r.prediction_id, r.create_sent_at) for r in store.clip_records(job_id)] == [("p1", None)]
