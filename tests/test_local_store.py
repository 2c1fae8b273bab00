"""LocalStore on real files and a real SQLite database: layout, atomicity, upserts, events, concurrency."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from subprocess import PIPE
from urllib.parse import urlparse
from urllib.request import url2pathname
from uuid import UUID, uuid4

import pytest

from clipgen.files import link_or_copy, write_bytes
from clipgen.stores.base import (
    INTENT_PREFIX,
    THUMBNAIL_BUCKET,
    VIDEO_BUCKET,
    ClipRecord,
    ClipStore,
    PredictionRecord,
    ThumbnailRecord,
    clip_object_path,
    thumbnail_object_path,
)
from clipgen.stores.local import _MIGRATIONS, DB_FILENAME, SCHEMA_VERSION, LocalStore

REPO_ROOT = Path(__file__).resolve().parents[1]


def _url_path(url: str) -> Path:
    parsed = urlparse(url)
    assert parsed.scheme == "file"
    return Path(url2pathname(parsed.path))


def _files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _clip(job_id: UUID, clip_index: int = 0, **changes: object) -> ClipRecord:
    base = ClipRecord(job_id=job_id, clip_index=clip_index, status="running", model="kling-v2")
    return base.model_copy(update=changes)


def test_satisfies_protocol_and_constructs_lazily(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    store: ClipStore = LocalStore(data_dir)  # mypy checks this assignment against the protocol
    assert not data_dir.exists()  # nothing touched until first use
    assert store.events(uuid4()) == []
    with closing(sqlite3.connect(data_dir / "video_generator.db")) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"clips", "clip_thumbnails", "job_events"} <= tables


def test_put_object_layout_url_and_overwrite(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    job_id = uuid4()
    source = tmp_path / "in.mp4"
    source.write_bytes(b"first version" * 1000)

    path = clip_object_path(job_id, 0)
    stored = store.put_object(VIDEO_BUCKET, path, source, "video/mp4")
    expected = tmp_path / "storage" / VIDEO_BUCKET / str(job_id) / "clip_0.mp4"
    assert (stored.bucket, stored.path) == (VIDEO_BUCKET, path)
    assert _url_path(stored.url) == expected.resolve()
    assert _url_path(stored.url).read_bytes() == source.read_bytes()
    assert store.signed_url(VIDEO_BUCKET, path) == stored.url

    source.write_bytes(b"second")
    again = store.put_object(VIDEO_BUCKET, path, source, "video/mp4")
    assert again.url == stored.url
    assert expected.read_bytes() == b"second"
    assert _files_under(tmp_path / "storage") == [expected]  # overwritten, no temp files left

    thumb = tmp_path / "t.jpg"
    thumb.write_bytes(b"jpeg")
    stored_thumb = store.put_object(THUMBNAIL_BUCKET, thumbnail_object_path(job_id, 0), thumb, "image/jpeg")
    assert _url_path(stored_thumb.url).read_bytes() == b"jpeg"


@pytest.mark.parametrize(
    ("bucket", "path"),
    [
        (VIDEO_BUCKET, "../escape.mp4"),
        (VIDEO_BUCKET, "job/../../escape.mp4"),
        (VIDEO_BUCKET, "/abs/clip_0.mp4"),
        (VIDEO_BUCKET, ""),
        ("no-such-bucket", "job/clip_0.mp4"),
    ],
)
def test_put_object_rejects_bad_bucket_or_path(tmp_path: Path, bucket: str, path: str) -> None:
    store = LocalStore(tmp_path / "data")
    source = tmp_path / "in.mp4"
    source.write_bytes(b"x")
    with pytest.raises(ValueError):
        store.put_object(bucket, path, source, "video/mp4")
    with pytest.raises(ValueError):
        store.signed_url(bucket, path)
    assert _files_under(tmp_path / "data") == []


def test_failed_copy_leaves_nothing_behind(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "data")
    path = clip_object_path(uuid4(), 3)
    with pytest.raises(FileNotFoundError):
        store.put_object(VIDEO_BUCKET, path, tmp_path / "missing.mp4", "video/mp4")
    with pytest.raises(IsADirectoryError):
        store.put_object(VIDEO_BUCKET, path, tmp_path, "video/mp4")
    assert _files_under(tmp_path / "data") == []
    with pytest.raises(FileNotFoundError):
        store.signed_url(VIDEO_BUCKET, path)


def test_put_object_links_the_stores_own_files_and_copies_others(tmp_path: Path) -> None:
    """A clip from the work directory (inside the data directory) is linked, not copied: no second 9 MB
    write per clip. Replacing it the package's way (a new file renamed over it) leaves the stored one as it
    was. A file from elsewhere (a user's) is copied: writing into it later does not reach the store."""
    store = LocalStore(tmp_path / "data")
    job_id = uuid4()
    work_file = tmp_path / "data" / "work" / str(job_id) / "clip_0.mp4"
    write_bytes(work_file, b"generated")
    stored = _url_path(
        store.put_object(VIDEO_BUCKET, clip_object_path(job_id, 0), work_file, "video/mp4").url
    )
    assert stored.stat().st_ino == work_file.stat().st_ino
    write_bytes(work_file, b"the next attempt's")
    assert stored.read_bytes() == b"generated"
    work_file.unlink()  # the flow tidies its work directory; the stored clip stays
    assert stored.read_bytes() == b"generated"
    assert _files_under(stored.parent) == [stored]  # no temporary link left

    users = tmp_path / "photo.jpg"
    users.write_bytes(b"user's")
    kept = _url_path(store.put_object(VIDEO_BUCKET, clip_object_path(job_id, 1), users, "image/jpeg").url)
    assert kept.stat().st_ino != users.stat().st_ino
    users.write_bytes(b"edited in place")
    assert kept.read_bytes() == b"user's"


def test_putting_the_same_linked_file_twice_leaves_no_temporary_name(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "data")
    source = tmp_path / "data" / "work" / "clip.mp4"
    write_bytes(source, b"clip")
    for _ in range(2):  # the second rename is between two links of one file: POSIX makes it a no-op
        stored = _url_path(store.put_object(VIDEO_BUCKET, "job/clip_0.mp4", source, "video/mp4").url)
    assert _files_under(stored.parent) == [stored]
    assert stored.read_bytes() == b"clip"


@pytest.mark.skipif(
    not Path("/dev/shm").is_dir() or Path("/dev/shm").stat().st_dev == Path(__file__).stat().st_dev,
    reason="needs a second filesystem (/dev/shm)",
)
def test_link_or_copy_copies_across_filesystems(tmp_path: Path) -> None:
    with tempfile.TemporaryDirectory(dir="/dev/shm") as other:
        source = Path(other) / "clip.mp4"
        source.write_bytes(b"elsewhere")
        if source.stat().st_dev == tmp_path.stat().st_dev:
            pytest.skip("tmp_path is on /dev/shm's filesystem")
        link_or_copy(source, tmp_path / "out" / "clip.mp4")
    assert (tmp_path / "out" / "clip.mp4").read_bytes() == b"elsewhere"
    assert _files_under(tmp_path / "out") == [tmp_path / "out" / "clip.mp4"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_readers_never_see_a_partial_copy(tmp_path: Path) -> None:
    """Feed the source through a pipe so the copy stalls half-way, then look at the final path."""
    store = LocalStore(tmp_path / "data")
    path = clip_object_path(uuid4(), 0)
    old = tmp_path / "old.mp4"
    old.write_bytes(b"old")
    final = _url_path(store.put_object(VIDEO_BUCKET, path, old, "video/mp4").url)

    fifo = tmp_path / "source.fifo"
    os.mkfifo(fifo)
    chunk = os.urandom(1024 * 1024)
    with ThreadPoolExecutor(max_workers=1) as pool:
        put = pool.submit(store.put_object, VIDEO_BUCKET, path, fifo, "video/mp4")
        with open(fifo, "wb") as pipe:
            pipe.write(chunk * 2)
            pipe.flush()
            deadline = time.monotonic() + 10
            while not any(p.stat().st_size >= len(chunk) for p in final.parent.glob("*.part")):
                assert time.monotonic() < deadline, "copy never started"
                time.sleep(0.01)
            assert final.read_bytes() == b"old"  # mid-copy: the old object, whole
            pipe.write(chunk)
        assert put.result(timeout=10).path == path
    assert final.read_bytes() == chunk * 3
    assert list(final.parent.iterdir()) == [final]


def test_upsert_clip_updates_in_place_and_keeps_created_at(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    job_id = uuid4()
    store.upsert_clip(_clip(job_id, 1, prediction_id="p1", attempts=1))
    store.upsert_clip(_clip(job_id, 0))
    (_, first) = store.clip_records(job_id)
    assert first.created_at is not None and first.updated_at is not None
    assert first.created_at.tzinfo is not None

    time.sleep(0.01)
    store.upsert_clip(
        _clip(job_id, 1, status="success", attempts=2, actual_duration=5.2, width=1280, height=720,
              fps=24.0, video_path=clip_object_path(job_id, 1), cost=0.35,
              created_at=datetime(2000, 1, 1, tzinfo=UTC))
    )  # fmt: skip
    records = store.clip_records(job_id)
    assert [r.clip_index for r in records] == [0, 1]
    second = records[1]
    assert (second.status, second.attempts, second.prediction_id, second.cost) == ("success", 2, None, 0.35)
    assert (second.width, second.height, second.fps, second.actual_duration) == (1280, 720, 24.0, 5.2)
    assert second.job_id == job_id
    assert second.created_at == first.created_at
    assert second.updated_at is not None and second.updated_at > first.updated_at
    assert store.clip_records(uuid4()) == []


def test_upsert_thumbnail_replaces_row(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    job_id = uuid4()
    path = thumbnail_object_path(job_id, 0)
    store.upsert_thumbnail(
        ThumbnailRecord(job_id=job_id, clip_index=0, thumbnail_path=path, thumbnail_url="a")
    )
    (first,) = store.thumbnail_records(job_id)
    store.upsert_thumbnail(
        ThumbnailRecord(job_id=job_id, clip_index=0, thumbnail_path=path, thumbnail_url="b")
    )
    (second,) = store.thumbnail_records(job_id)
    assert second.thumbnail_url == "b"
    assert second.created_at == first.created_at and second.created_at is not None


def test_events_increase_across_jobs_and_resume_after(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    job_a, job_b = uuid4(), uuid4()
    marker = uuid4()
    ids_a = []
    for i in range(5):
        ids_a.append(
            store.append_event(job_a, "clip_progress", {"i": i, "nested": {"list": [1, {"x": None}]}})
        )
        store.append_event(job_b, "other", {"i": i})
    ids_a.append(store.append_event(job_a, "done", {"id": marker, "at": datetime(2025, 1, 1, tzinfo=UTC)}))
    assert ids_a == sorted(ids_a) and len(set(ids_a)) == len(ids_a)

    events = store.events(job_a)
    assert [e.id for e in events] == ids_a
    assert all(e.job_id == job_a and e.created_at.tzinfo is not None for e in events)
    assert events[0].data == {"i": 0, "nested": {"list": [1, {"x": None}]}}
    assert events[-1].event == "done"
    assert events[-1].data == {"id": str(marker), "at": "2025-01-01 00:00:00+00:00"}

    k = ids_a[2]
    assert [e.id for e in store.events(job_a, after=k)] == ids_a[3:]
    assert store.events(job_a, after=ids_a[-1]) == []


def test_concurrent_writers_never_hit_locked_database(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)  # fresh: the threads also race the lazy schema creation
    job_ids = [uuid4() for _ in range(8)]
    start = threading.Barrier(len(job_ids), timeout=30)

    def work(job_id: UUID) -> None:
        start.wait()
        for i in range(50):
            store.append_event(job_id, "clip_progress", {"i": i})
            store.upsert_clip(_clip(job_id, i % 5, attempts=i))

    with ThreadPoolExecutor(max_workers=len(job_ids)) as pool:
        futures = [pool.submit(work, job_id) for job_id in job_ids]
        for future in futures:
            future.result(timeout=120)  # re-raises e.g. "database is locked"
    all_ids: list[int] = []
    for job_id in job_ids:
        events = store.events(job_id)
        assert [e.data["i"] for e in events] == list(range(50))
        all_ids += [e.id for e in events]
        records = store.clip_records(job_id)
        assert [r.clip_index for r in records] == [0, 1, 2, 3, 4]
        assert [r.attempts for r in records] == [45, 46, 47, 48, 49]
    assert len(all_ids) == len(set(all_ids)) == 400
    assert sorted(all_ids) == list(range(1, 401))


def test_second_instance_sees_the_same_data(tmp_path: Path) -> None:
    writer, reader = LocalStore(tmp_path), LocalStore(tmp_path)
    job_id = uuid4()
    source = tmp_path / "in.mp4"
    source.write_bytes(b"video")
    stored = writer.put_object(VIDEO_BUCKET, clip_object_path(job_id, 0), source, "video/mp4")
    writer.upsert_clip(_clip(job_id, 0, status="success", video_path=stored.path))
    event_id = writer.append_event(job_id, "clip_completed", {"clip_index": 0})

    assert reader.signed_url(VIDEO_BUCKET, stored.path) == stored.url
    assert [r.status for r in reader.clip_records(job_id)] == ["success"]
    assert [e.id for e in reader.events(job_id)] == [event_id]


def test_other_process_writes_while_this_one_reads_and_writes(tmp_path: Path) -> None:
    """As the flow and the SSE server do: one process appends, another tails with `after` and also writes."""
    job_id, own_job = uuid4(), uuid4()
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from uuid import UUID
        from clipgen.stores.local import LocalStore
        store = LocalStore(Path({str(tmp_path)!r}))
        for i in range(200):
            store.append_event(UUID({str(job_id)!r}), "clip_progress", {{"i": i}})
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    store = LocalStore(tmp_path)
    seen: list[int] = []
    log = tmp_path / "child.log"
    with (
        log.open("wb") as child_log,
        subprocess.Popen([sys.executable, "-c", script], env=env, stderr=child_log) as proc,
    ):
        deadline = time.monotonic() + 120
        while True:
            finished = proc.poll() is not None  # read once more after exit to catch the tail
            for event in store.events(job_id, after=seen[-1] if seen else 0):
                assert event.data["i"] == len(seen)
                seen.append(event.id)
            store.append_event(own_job, "tick", {})
            if finished:
                break
            if time.monotonic() > deadline:
                proc.kill()  # then the length assertion below fails instead of the test hanging
            time.sleep(0.005)
    assert proc.returncode == 0, log.read_text()
    assert len(seen) == 200 and seen == sorted(seen)


OLD_TIME = "2026-11-21T00:00:00.000000+00:00"


def test_a_version_4_database_is_upgraded_in_place(tmp_path: Path) -> None:
    """v5 drops clips.create_sent_at, adds the lease, metadata and failed_for_good, and rebuilds the ledger
    for its new statuses: rows, ids, times and index survive, and 'unused' becomes 'abandoned'."""
    job_id = uuid4()
    with closing(sqlite3.connect(tmp_path / DB_FILENAME)) as conn, conn:
        for statements in _MIGRATIONS[:4]:
            for statement in statements:
                conn.execute(statement)
        conn.execute(
            "INSERT INTO clips (job_id, clip_index, status, model, prediction_id, attempts, actual_duration, "
            "video_path, cost, plan_fingerprint, create_sent_at, created_at, updated_at) VALUES (?, 0, "
            "'success', 'veo-3.1', 'p1', 2, 5.04, 'v.mp4', 0.4, 'f1', ?, ?, ?)",
            (str(job_id), OLD_TIME, OLD_TIME, OLD_TIME),
        )
        for prediction_id, status in (("p0", "unused"), ("p1", "delivered")):
            conn.execute(
                "INSERT INTO clip_predictions (prediction_id, job_id, clip_index, provider, model, "
                "plan_fingerprint, status, cost, created_at, updated_at) "
                "VALUES (?, ?, 0, 'replicate', 'veo-3.1', 'f1', ?, 0.4, ?, ?)",
                (prediction_id, str(job_id), status, OLD_TIME, OLD_TIME),
            )
        conn.execute("PRAGMA user_version = 4")

    store = LocalStore(tmp_path)
    [clip] = store.clip_records(job_id)
    assert (clip.status, clip.model, clip.prediction_id, clip.attempts, clip.actual_duration) == (
        "success", "veo-3.1", "p1", 2, 5.04,
    )  # fmt: skip
    assert (clip.video_path, clip.cost, clip.plan_fingerprint) == ("v.mp4", 0.4, "f1")
    assert (clip.metadata, clip.failed_for_good) == ({}, False)
    assert (clip.lease_owner, clip.lease_expires_at) == (None, None)
    assert clip.created_at == datetime(2026, 11, 21, tzinfo=UTC)
    ledger = store.predictions(job_id)
    assert [(r.prediction_id, r.status) for r in ledger] == [("p0", "abandoned"), ("p1", "delivered")]
    assert {r.created_at for r in ledger} == {datetime(2026, 11, 21, tzinfo=UTC)}

    # The new columns and statuses work, and new ledger rows come after the old ones.
    assert store.take_clip_lease(job_id, 0, "run-a", 60, "veo-3.1")
    intent = PredictionRecord(
        prediction_id=f"{INTENT_PREFIX}{uuid4()}", job_id=job_id, clip_index=1, provider="replicate",
        model="veo-3.1", plan_fingerprint="f2", status="intended", cost=0.4,
    )  # fmt: skip
    assert not store.reserve_prediction(intent, 1.1)  # 0.4 of p1 + 0.4 of p0: 'abandoned' was paid for too
    assert store.reserve_prediction(intent, 1.2)
    assert [r.prediction_id for r in store.predictions(job_id)] == ["p0", "p1", intent.prediction_id]
    with closing(sqlite3.connect(tmp_path / DB_FILENAME)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
        columns = {row[1] for row in conn.execute("PRAGMA table_info(clips)")}
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(clip_predictions)")}
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert "create_sent_at" not in columns
    assert {"lease_owner", "lease_expires_at", "metadata", "failed_for_good"} <= columns
    assert "clip_predictions_job" in indexes


# Run by each racing process: wait for the start file, then try every clip's lease and a reservation per clip
# (budget: 3 of them in all), and print what it got.
_RACER = """
import json, sys, time
from pathlib import Path
from uuid import UUID, uuid4
from clipgen.stores.base import PredictionRecord
from clipgen.stores.local import LocalStore

data_dir, job_id, owner, clips = Path(sys.argv[1]), UUID(sys.argv[2]), sys.argv[3], int(sys.argv[4])
store = LocalStore(data_dir)
store.events(job_id)  # the schema is ready before the start, so the race is the leases' alone
(data_dir / f"ready-{owner}").touch()
while not (data_dir / "go").exists():
    time.sleep(0.001)
leases = [i for i in range(clips) if store.take_clip_lease(job_id, i, owner, 60, "m")]
reserved = [
    i for i in range(clips)
    if store.reserve_prediction(
        PredictionRecord(prediction_id=f"intent:{uuid4()}", job_id=job_id, clip_index=i, provider="p",
                         model="m", plan_fingerprint="f", run_id=owner, status="intended", cost=0.35),
        0.35 * 3,
    )
]
print(json.dumps({"leases": leases, "reserved": reserved}))
"""


def test_racing_processes_never_share_a_lease_or_overspend(tmp_path: Path) -> None:
    job_id, owners, clips = uuid4(), ["proc-0", "proc-1", "proc-2"], 20
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-c", _RACER, str(tmp_path), str(job_id)]
    procs = [
        subprocess.Popen([*command, owner, str(clips)], env=env, stdout=PIPE, stderr=PIPE, text=True)
        for owner in owners
    ]
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"ready-{owner}").exists() for owner in owners):
            assert time.monotonic() < deadline, "the racers never got ready"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.01)
        (tmp_path / "go").touch()
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        for proc in procs:
            proc.kill()
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    results = [json.loads(out) for out, _ in outputs]

    won = sorted(i for result in results for i in result["leases"])
    assert won == list(range(clips))  # every clip's lease went to exactly one process
    store = LocalStore(tmp_path)
    holders = {r.clip_index: r.lease_owner for r in store.clip_records(job_id)}
    assert holders == {
        i: owner for owner, result in zip(owners, results, strict=True) for i in result["leases"]
    }
    assert sum(len(result["reserved"]) for result in results) == 3
    assert len(store.predictions(job_id)) == 3
