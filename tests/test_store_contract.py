"""One contract, two stores: the local store and the Supabase store (real PostgreSQL through real PostgREST,
with the real Storage server behind the same base URL) must behave the same, so they cannot drift."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit
from uuid import UUID, uuid4

import httpx
import pytest

from clipgen.settings import Settings
from clipgen.stores.base import (
    INTENT_PREFIX,
    REFERENCE_BUCKET,
    THUMBNAIL_BUCKET,
    VIDEO_BUCKET,
    ClipRecord,
    ClipStore,
    PredictionRecord,
    ThumbnailRecord,
    clip_object_path,
    thumbnail_object_path,
)
from clipgen.stores.local import LocalStore
from clipgen.stores.supabase import SupabaseStore

T = TypeVar("T")


@pytest.fixture(params=["local", "supabase"])
def store(request: pytest.FixtureRequest, data_dir: Path) -> Iterator[ClipStore]:
    # Built directly rather than through clipgen.backends: this suite is about the stores alone.
    if request.param == "local":
        yield LocalStore(data_dir)
        return
    request.getfixturevalue("supabase_env")
    opened = SupabaseStore.from_settings(Settings())
    yield opened
    opened.close()


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


def test_objects_are_read_back_whole_and_found_by_name(store: ClipStore, tmp_path: Path) -> None:
    source = tmp_path / "image.png"
    source.write_bytes(b"\x89PNG not really, but bytes" * 1000)
    path = f"sha256/{uuid4().hex * 2}.png"
    assert not store.has_object(REFERENCE_BUCKET, path)
    store.put_object(REFERENCE_BUCKET, path, source, "image/png")
    assert store.has_object(REFERENCE_BUCKET, path)

    dest = tmp_path / "read" / "copy.png"
    dest.parent.mkdir()
    dest.write_bytes(b"an older file, replaced whole")
    store.read_object(REFERENCE_BUCKET, path, dest)
    assert dest.read_bytes() == source.read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == ["copy.png"]  # no temporary file left behind
    with pytest.raises(FileNotFoundError):
        store.read_object(REFERENCE_BUCKET, f"sha256/{uuid4().hex * 2}.png", tmp_path / "missing.png")
    assert not (tmp_path / "missing.png").exists()


def test_signing_a_missing_object_fails(store: ClipStore) -> None:
    with pytest.raises(Exception):  # noqa: B017 - each store has its own error; what matters is no link
        store.signed_url(VIDEO_BUCKET, f"{uuid4()}/clip_0.mp4")


def test_supabase_store_creates_private_buckets_once_even_when_racing(supabase_env: Any) -> None:
    stores = [SupabaseStore.from_settings(Settings()) for _ in range(4)]
    supabase_env.storage.reset()  # no buckets: every store finds them missing and creates them at once
    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda s: s._ensure_buckets(), stores))
    finally:
        for store in stores:
            store.close()
    assert {name: bucket.public for name, bucket in supabase_env.storage.buckets.items()} == {
        "video-clips": False,
        "clip-thumbnails": False,
        "clip-references": False,
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


def test_a_clip_row_keeps_its_metadata_and_whether_it_failed_for_good(store: ClipStore) -> None:
    job_id = uuid4()
    metadata = {"provider": "replicate", "preview": {"width": 1280, "tags": ["a", 1, None]}, "ok": True}
    store.upsert_clip(clip(job_id, 0, status="failed", metadata=metadata, failed_for_good=True, error="nsfw"))
    store.upsert_clip(clip(job_id, 1))
    first, second = store.clip_records(job_id)
    assert (first.metadata, first.failed_for_good) == (metadata, True)
    assert (second.metadata, second.failed_for_good) == ({}, False)  # the defaults

    store.upsert_clip(clip(job_id, 0, status="success", metadata={"provider": "local"}))
    assert [(r.metadata, r.failed_for_good) for r in store.clip_records(job_id)] == [
        ({"provider": "local"}, False),
        ({}, False),
    ]


# -- clip leases ------------------------------------------------------------------------------------------


def lease(store: ClipStore, job_id: UUID, index: int = 0) -> tuple[str | None, datetime | None]:
    [row] = [r for r in store.clip_records(job_id) if r.clip_index == index]
    return row.lease_owner, row.lease_expires_at


def race(threads: int, call: Callable[[int], T]) -> list[T]:
    """`call(i)` in `threads` threads released at the same moment, so they really contend."""
    start = threading.Barrier(threads, timeout=30)

    def run(i: int) -> T:
        start.wait()
        return call(i)

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(run, range(threads)))


def test_a_lease_is_taken_refused_renewed_and_released(store: ClipStore) -> None:
    job_id = uuid4()
    before = datetime.now(UTC)
    assert store.take_clip_lease(job_id, 0, "run-a", 60, "veo-3.1")
    # The first take inserts the clip's row.
    [row] = store.clip_records(job_id)
    assert (row.status, row.model, row.attempts, row.lease_owner) == ("running", "veo-3.1", 0, "run-a")
    assert row.lease_expires_at is not None
    assert 55 < (row.lease_expires_at - before).total_seconds() < 65  # the store's clock: this machine's

    assert not store.take_clip_lease(job_id, 0, "run-b", 60, "veo-3.1")  # a live lease of another run
    assert not store.renew_clip_lease(job_id, 0, "run-b", 60)
    store.release_clip_lease(job_id, 0, "run-b")  # not run-b's: a no-op
    assert lease(store, job_id)[0] == "run-a"

    time.sleep(0.01)
    assert store.take_clip_lease(job_id, 0, "run-a", 60, "veo-3.1")  # again by its owner: renewed
    renewed = lease(store, job_id)[1]
    assert renewed is not None and renewed > row.lease_expires_at
    assert store.renew_clip_lease(job_id, 0, "run-a", 120)
    extended = lease(store, job_id)[1]
    assert extended is not None and (extended - renewed).total_seconds() > 50

    store.release_clip_lease(job_id, 0, "run-a")
    assert lease(store, job_id) == (None, None)
    assert not store.renew_clip_lease(job_id, 0, "run-a", 60)  # released: nothing left to renew
    assert store.take_clip_lease(job_id, 0, "run-b", 60, "veo-3.1")
    assert lease(store, job_id)[0] == "run-b"
    assert len(store.clip_records(job_id)) == 1


def test_taking_a_lease_on_a_stored_clip_changes_only_the_lease(store: ClipStore) -> None:
    job_id = uuid4()
    done = clip(job_id, 0, status="success", attempts=2, cost=0.35, video_path="p", metadata={"k": "v"})
    store.upsert_clip(done)
    assert store.take_clip_lease(job_id, 0, "run-a", 60, "other-model")
    [row] = store.clip_records(job_id)
    assert row.lease_owner == "run-a"
    assert (row.status, row.model, row.attempts, row.cost, row.video_path, row.metadata) == (
        "success", "m", 2, 0.35, "p", {"k": "v"},
    )  # fmt: skip


def test_an_expired_lease_is_taken_over_and_its_old_owner_loses_it(store: ClipStore) -> None:
    job_id = uuid4()
    assert store.take_clip_lease(job_id, 0, "run-a", 0.5, "m")
    assert store.take_clip_lease(job_id, 1, "run-a", 0.5, "m")
    time.sleep(1.0)
    # Expired but not taken over: still its owner's to renew.
    assert store.renew_clip_lease(job_id, 1, "run-a", 60)
    assert lease(store, job_id, 1)[0] == "run-a"
    # Expired: another run takes it; the old owner can neither renew nor release it any more.
    assert store.take_clip_lease(job_id, 0, "run-b", 60, "m")
    assert not store.renew_clip_lease(job_id, 0, "run-a", 60)
    store.release_clip_lease(job_id, 0, "run-a")
    assert lease(store, job_id, 0)[0] == "run-b"


def test_upsert_clip_neither_writes_nor_clears_a_lease(store: ClipStore) -> None:
    job_id = uuid4()
    assert store.take_clip_lease(job_id, 0, "run-a", 60, "m")
    held = lease(store, job_id)
    # The flow writes the clip's progress while it holds the lease: the lease must survive every write,
    # including one that carries (stale or forged) lease fields.
    store.upsert_clip(clip(job_id, 0, status="success", attempts=1))
    assert lease(store, job_id) == held
    forged = {"lease_owner": "intruder", "lease_expires_at": datetime(2099, 1, 1, tzinfo=UTC)}
    store.upsert_clip(clip(job_id, 0, status="success", attempts=2, **forged))
    assert lease(store, job_id) == held
    [row] = store.clip_records(job_id)
    assert (row.status, row.attempts) == ("success", 2)  # the rest of the write went through
    # A row first written by upsert_clip has no lease, whatever the record says.
    store.upsert_clip(clip(job_id, 1, **forged))
    assert lease(store, job_id, 1) == (None, None)


def test_racing_runs_never_both_take_a_lease(store: ClipStore) -> None:
    job_id, runs = uuid4(), 8
    for index in range(5):

        def take(i: int, index: int = index) -> bool:
            return store.take_clip_lease(job_id, index, f"run-{i}", 60, "m")

        taken = race(runs, take)
        assert taken.count(True) == 1, taken
        assert lease(store, job_id, index)[0] == f"run-{taken.index(True)}"
    assert [r.clip_index for r in store.clip_records(job_id)] == [0, 1, 2, 3, 4]  # one row each


# -- reservations and intents on the ledger ---------------------------------------------------------------


def intent(job_id: UUID, cost: float = 0.35, index: int = 0) -> PredictionRecord:
    return PredictionRecord(
        prediction_id=f"{INTENT_PREFIX}{uuid4()}", job_id=job_id, clip_index=index, provider="replicate",
        model="veo-3.1", plan_fingerprint="f", run_id="run-1", status="intended", cost=cost,
    )  # fmt: skip


def test_racing_reservations_never_pass_the_budget(store: ClipStore) -> None:
    job_id = uuid4()
    budget = 0.35 * 3  # exactly three reservations (the float sum rounds just below it)
    reserved = race(8, lambda i: store.reserve_prediction(intent(job_id, index=i), budget))
    assert reserved.count(True) == 3, reserved
    rows = store.predictions(job_id)
    assert len(rows) == 3 and {r.status for r in rows} == {"intended"}
    assert sorted(r.clip_index for r in rows) == sorted(i for i, ok in enumerate(reserved) if ok)


def test_a_reservation_counts_every_row_of_the_job_but_void_ones(store: ClipStore) -> None:
    job_id = uuid4()
    for status, cost in (("void", 5.0), ("failed", 0.2), ("delivered", 0.3)):
        store.record_prediction(intent(job_id, cost).model_copy(update={"status": status}))
    store.record_prediction(intent(uuid4(), 5.0))  # another job's spend is not this job's
    assert store.reserve_prediction(intent(job_id, 0.4), 1.0)  # 0.2 + 0.3 + 0.4 <= 1.0
    assert not store.reserve_prediction(intent(job_id, 0.2), 1.0)  # intended rows count: 0.9 + 0.2 > 1.0
    assert store.reserve_prediction(intent(job_id, 0.1), 1.0)  # exactly the budget
    assert not store.reserve_prediction(intent(job_id, 0.01), 1.0)
    assert store.reserve_prediction(intent(job_id, 99.0), None)  # no budget: no limit, still recorded
    assert [r.cost for r in store.predictions(job_id) if r.status == "intended"] == [0.4, 0.1, 99.0]


def test_a_repeated_reservation_is_granted_once(store: ClipStore) -> None:
    job_id = uuid4()
    first = intent(job_id, 0.5)
    assert store.reserve_prediction(first, 0.6)
    # The same intent again (a retry after a lost answer): granted, not counted twice, not inserted twice.
    assert store.reserve_prediction(first, 0.6)
    assert [r.prediction_id for r in store.predictions(job_id)] == [first.prediction_id]


def test_resolving_an_intent_keeps_its_place_and_creation_time(store: ClipStore) -> None:
    job_id = uuid4()
    pending = intent(job_id, 0.35)
    assert store.reserve_prediction(pending, None)
    later = intent(job_id, 0.2, index=1)
    assert store.reserve_prediction(later, None)
    [created_at, _] = [r.created_at for r in store.predictions(job_id)]
    time.sleep(0.01)

    made = pending.model_copy(update={"prediction_id": f"p-{uuid4().hex}", "status": "created", "cost": 0.4})
    store.resolve_intent(pending.prediction_id, made)
    rows = store.predictions(job_id)
    assert [(r.prediction_id, r.status, r.cost) for r in rows] == [
        (made.prediction_id, "created", 0.4),
        (later.prediction_id, "intended", 0.2),
    ]
    assert rows[0].created_at == created_at
    assert rows[0].updated_at is not None and created_at is not None and rows[0].updated_at > created_at

    store.resolve_intent(pending.prediction_id, made)  # repeated: nothing changes but the time
    assert [(r.prediction_id, r.created_at) for r in store.predictions(job_id)] == [
        (made.prediction_id, created_at),
        (later.prediction_id, rows[1].created_at),
    ]


def test_resolving_an_intent_whose_prediction_is_recorded_already_removes_the_intent(
    store: ClipStore,
) -> None:
    job_id = uuid4()
    recorded = PredictionRecord(
        prediction_id=f"p-{uuid4().hex}", job_id=job_id, clip_index=0, provider="replicate", model="veo-3.1",
        plan_fingerprint="f", status="created", cost=0.35,
    )  # fmt: skip
    store.record_prediction(recorded)
    created_at = store.predictions(job_id)[0].created_at
    pending = intent(job_id)
    assert store.reserve_prediction(pending, None)

    store.resolve_intent(pending.prediction_id, recorded.model_copy(update={"status": "succeeded"}))
    [row] = store.predictions(job_id)
    assert (row.prediction_id, row.status, row.created_at) == (
        recorded.prediction_id,
        "succeeded",
        created_at,
    )

    # No intent row at all (it was resolved by another attempt): the record is written all the same.
    other = recorded.model_copy(update={"prediction_id": f"p-{uuid4().hex}", "clip_index": 1})
    store.resolve_intent(f"{INTENT_PREFIX}{uuid4()}", other)
    assert [r.prediction_id for r in store.predictions(job_id)] == [
        recorded.prediction_id,
        other.prediction_id,
    ]
