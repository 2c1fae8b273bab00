"""A ClipStore on the local disk: files under `storage/<bucket>/`, records in one SQLite file (WAL).

This module owns the files, the clip, thumbnail and event records, and the paid-work ledger and leases; the
SQLite file's schema and connections are clipgen/stores/local_db.py's, the job queue is
clipgen/stores/local_queue.py's. Files are written through clipgen.files (atomic); requests are not retried
here: SQLite waits for its lock (busy timeout), and the callers own any retry (see tasks/__init__.py).
"""

from __future__ import annotations

import json
import sqlite3
import stat
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any
from uuid import UUID

from clipgen.files import copy_file, link_or_copy
from clipgen.stores.base import (
    BUCKETS,
    ClipRecord,
    PredictionRecord,
    StoredEvent,
    StoredObject,
    ThumbnailRecord,
)
from clipgen.stores.local_db import _MIGRATIONS as _MIGRATIONS  # `x as x`: re-exported, tests import them
from clipgen.stores.local_db import DB_FILENAME as DB_FILENAME
from clipgen.stores.local_db import SCHEMA_VERSION as SCHEMA_VERSION
from clipgen.stores.local_db import now_text, time_text
from clipgen.stores.local_queue import LocalJobQueue
from clipgen.stores.queue import check_lease

STORAGE_DIRNAME = "storage"

_CLIP_COLUMNS = (
    "job_id", "clip_index", "status", "model", "prediction_id", "attempts", "requested_duration",
    "target_duration", "actual_duration", "width", "height", "fps", "video_path", "cost", "error",
    "plan_fingerprint", "metadata", "failed_for_good",
)  # fmt: skip
# Read, never written by upsert_clip: only the lease calls below move a lease.
_LEASE_COLUMNS = ("lease_owner", "lease_expires_at")
_PREDICTION_COLUMNS = (
    "prediction_id", "job_id", "clip_index", "provider", "model", "plan_fingerprint", "run_id", "status",
    "cost", "error",
)  # fmt: skip
_THUMBNAIL_COLUMNS = ("job_id", "clip_index", "thumbnail_path", "thumbnail_url")


def _upsert_sql(
    table: str,
    columns: tuple[str, ...],
    timestamps: tuple[str, ...],
    key: tuple[str, ...] = ("job_id", "clip_index"),
) -> str:
    """INSERT, or on a repeat of `key` update every column except the key and created_at."""
    names = (*columns, *timestamps)
    updates = [f"{c} = excluded.{c}" for c in names if c not in (*key, "created_at")]
    return (
        f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join(':' + n for n in names)}) "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {', '.join(updates)}"
    )


_UPSERT_CLIP = _upsert_sql("clips", _CLIP_COLUMNS, ("created_at", "updated_at"))
_UPSERT_THUMBNAIL = _upsert_sql("clip_thumbnails", _THUMBNAIL_COLUMNS, ("created_at",))
_UPSERT_PREDICTION = _upsert_sql(
    "clip_predictions", _PREDICTION_COLUMNS, ("created_at", "updated_at"), key=("prediction_id",)
)


class LocalStore(LocalJobQueue):
    """Thread- and process-safe: one SQLite connection per operation, files swapped in with os.replace."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.storage_dir = self.data_dir / STORAGE_DIRNAME

    # -- files ---------------------------------------------------------------------------------------

    def _object_path(self, bucket: str, path: str) -> Path:
        if bucket not in BUCKETS:
            raise ValueError(f"unknown bucket {bucket!r}; expected one of {BUCKETS}")
        parts = PurePosixPath(path).parts
        if not parts or PurePosixPath(path).is_absolute() or ".." in parts or "\\" in path:
            raise ValueError(f"object path must be a relative POSIX path without '..': {path!r}")
        return self.storage_dir / bucket / Path(*parts)

    def object_file(self, bucket: str, path: str) -> Path | None:
        try:
            self._object_path(bucket, path)  # refuses an unknown bucket and `..`
            root = (self.storage_dir / bucket).resolve(strict=True)
            file = root.joinpath(*PurePosixPath(path).parts)
            if file.resolve(strict=True) != file:
                return None  # through a symlink, which may lead out of the store
            return file if stat.S_ISREG(file.lstat().st_mode) else None
        except (OSError, ValueError):  # missing, a name too long, a NUL byte, refused above
            return None

    def put_object(self, bucket: str, path: str, source: Path, content_type: str) -> StoredObject:
        # content_type only matters to HTTP-serving stores; a local file has none to keep.
        dest = self._object_path(bucket, path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if self._own_file(source):
            link_or_copy(source, dest)
        else:
            copy_file(source, dest)
        return StoredObject(bucket=bucket, path=path, url=self.signed_url(bucket, path))

    def _own_file(self, source: Path) -> bool:
        """Whether `source` lies in this store's data directory (the flow's work directory is there): a
        file the package wrote through clipgen.files, never in place, so the store may link it instead of
        copying it. A file of the user's (a reference image, say) is copied: they may edit it in place."""
        try:
            return source.resolve(strict=True).is_relative_to(self.data_dir.resolve())
        except OSError:
            return False  # missing: copy_file says so

    def signed_url(self, bucket: str, path: str) -> str:
        target = self._object_path(bucket, path)
        if not target.is_file():
            raise FileNotFoundError(f"no object {path!r} in bucket {bucket!r}")
        return target.resolve().as_uri()

    def has_object(self, bucket: str, path: str) -> bool:
        return self._object_path(bucket, path).is_file()

    def read_object(self, bucket: str, path: str, dest: Path) -> None:
        # put_object under another name: the same atomic copy, from the bucket to `dest`.
        source = self._object_path(bucket, path)
        if not source.is_file():
            raise FileNotFoundError(f"no object {path!r} in bucket {bucket!r}")
        copy_file(source, dest)

    # -- records -------------------------------------------------------------------------------------

    def upsert_clip(self, record: ClipRecord) -> None:
        # mode="json": metadata is stored as the JSON the Supabase store would send (UUIDs, times as text).
        params = record.model_dump(mode="json", include=set(_CLIP_COLUMNS))
        params.update(
            metadata=json.dumps(params["metadata"]),
            created_at=time_text(record.created_at),
            updated_at=now_text(),
        )
        with closing(self._connect()) as conn, conn:
            conn.execute(_UPSERT_CLIP, params)

    def upsert_thumbnail(self, record: ThumbnailRecord) -> None:
        params = record.model_dump(include=set(_THUMBNAIL_COLUMNS))
        params.update(job_id=str(record.job_id), created_at=time_text(record.created_at))
        with closing(self._connect()) as conn, conn:
            conn.execute(_UPSERT_THUMBNAIL, params)

    def append_event(self, job_id: UUID, event: str, data: dict[str, Any]) -> int:
        # default=str: UUIDs, datetimes and Paths in progress payloads become strings instead of raising.
        payload = json.dumps(data, default=str)
        with closing(self._connect()) as conn, conn:
            cursor = conn.execute(
                "INSERT INTO job_events (job_id, event, data, created_at) VALUES (?, ?, ?, ?)",
                (str(job_id), event, payload, now_text()),
            )
            assert cursor.lastrowid is not None  # always set after a successful single-row INSERT
            return cursor.lastrowid

    def events(self, job_id: UUID, after: int = 0) -> list[StoredEvent]:
        with closing(self._connect()) as conn:
            rows = conn.execute(
                "SELECT id, job_id, event, data, created_at FROM job_events "
                "WHERE job_id = ? AND id > ? ORDER BY id",
                (str(job_id), after),
            ).fetchall()
        return [StoredEvent.model_validate({**dict(row), "data": json.loads(row["data"])}) for row in rows]

    def clip_records(self, job_id: UUID) -> list[ClipRecord]:
        rows = self._job_rows("clips", (*_CLIP_COLUMNS, *_LEASE_COLUMNS, "created_at", "updated_at"), job_id)
        return [ClipRecord.model_validate({**row, "metadata": json.loads(row["metadata"])}) for row in rows]

    def thumbnail_records(self, job_id: UUID) -> list[ThumbnailRecord]:
        rows = self._job_rows("clip_thumbnails", (*_THUMBNAIL_COLUMNS, "created_at"), job_id)
        return [ThumbnailRecord.model_validate(row) for row in rows]

    def record_prediction(self, record: PredictionRecord) -> None:
        with closing(self._connect(durable=True)) as conn, conn:
            conn.execute(_UPSERT_PREDICTION, _prediction_params(record))

    def predictions(self, job_id: UUID) -> list[PredictionRecord]:
        columns = (*_PREDICTION_COLUMNS, "created_at", "updated_at")
        rows = self._job_rows("clip_predictions", columns, job_id, order="id")
        return [PredictionRecord.model_validate(row) for row in rows]

    def _job_rows(
        self, table: str, columns: tuple[str, ...], job_id: UUID, order: str = "clip_index"
    ) -> list[dict[str, Any]]:
        with closing(self._connect()) as conn:
            rows = conn.execute(
                f"SELECT {', '.join(columns)} FROM {table} WHERE job_id = ? ORDER BY {order}",
                (str(job_id),),
            ).fetchall()
        return [dict(row) for row in rows]

    # -- paid work: budget reservations on the ledger, clip leases ------------------------------------
    # Each call is one _write() transaction, so two runs of a job can neither both take the last of its
    # budget nor both take one clip. The ledger's writes are durable (synced before they return): they
    # record money. Times are this machine's clock (UTC, _TIME_FORMAT: text order is time order), which
    # every process sharing this file shares.

    def reserve_prediction(self, record: PredictionRecord, budget_usd: float | None) -> bool:
        with closing(self._write(durable=True)) as conn, conn:
            if _has_prediction(conn, record.prediction_id):
                return True  # a repeated call: this intent was reserved already (the Supabase store's retry)
            committed = _committed_spend(conn, record.job_id)
            if budget_usd is not None and committed + record.cost > budget_usd + _SPEND_EPSILON:
                return False
            conn.execute(_UPSERT_PREDICTION, _prediction_params(record))
            return True

    def resolve_intent(self, intent_id: str, record: PredictionRecord) -> None:
        params = _prediction_params(record)
        with closing(self._write(durable=True)) as conn, conn:
            new = intent_id != record.prediction_id and not _has_prediction(conn, record.prediction_id)
            # A new prediction takes over its intent's row: the row's id (place on the ledger) and created_at.
            if new and conn.execute(_RESOLVE_INTENT, {**params, "intent_id": intent_id}).rowcount == 1:
                return
            # No intent row, or the prediction is on the ledger already (recorded by an earlier try).
            conn.execute(_UPSERT_PREDICTION, params)
            if intent_id != record.prediction_id:
                conn.execute("DELETE FROM clip_predictions WHERE prediction_id = ?", (intent_id,))

    def take_clip_lease(self, job_id: UUID, clip_index: int, owner: str, seconds: float, model: str) -> bool:
        check_lease(seconds)
        with closing(self._write()) as conn, conn:
            now = datetime.now(UTC)
            params = _lease_params(job_id, clip_index, owner, now, seconds)
            return conn.execute(_TAKE_LEASE, {**params, "model": model}).rowcount == 1

    def renew_clip_lease(self, job_id: UUID, clip_index: int, owner: str, seconds: float) -> bool:
        check_lease(seconds)
        with closing(self._write()) as conn, conn:
            params = _lease_params(job_id, clip_index, owner, datetime.now(UTC), seconds)
            return conn.execute(_RENEW_LEASE, params).rowcount == 1

    def release_clip_lease(self, job_id: UUID, clip_index: int, owner: str) -> None:
        with closing(self._write()) as conn, conn:
            conn.execute(
                "UPDATE clips SET lease_owner = NULL, lease_expires_at = NULL "
                "WHERE job_id = ? AND clip_index = ? AND lease_owner = ?",
                (str(job_id), clip_index, owner),
            )


# Money compares with a little slack, so a budget of exactly 3 reservations is not refused the third by a
# rounding error in the sum (the same slack as the Supabase store's reserve_prediction).
_SPEND_EPSILON = 1e-9
# The intent row takes the prediction's id and fields; created_at is not in the SET, so it stays.
_RESOLVE_INTENT = (
    f"UPDATE clip_predictions SET {', '.join(f'{c} = :{c}' for c in _PREDICTION_COLUMNS)}, "
    "updated_at = :updated_at WHERE prediction_id = :intent_id"
)
# Insert the clip's row, or take its lease when free, expired or already the owner's. When another owner
# holds a live lease the DO UPDATE's WHERE is false and nothing changes: rowcount 0. Only the lease columns
# change on a row that exists: its status, attempts and clip stay as they are.
_TAKE_LEASE = (
    "INSERT INTO clips (job_id, clip_index, status, model, attempts, lease_owner, lease_expires_at, "
    "created_at, updated_at) "
    "VALUES (:job_id, :clip_index, 'running', :model, 0, :owner, :expires, :now, :now) "
    "ON CONFLICT (job_id, clip_index) DO UPDATE SET lease_owner = excluded.lease_owner, "
    "lease_expires_at = excluded.lease_expires_at "
    "WHERE clips.lease_owner IS NULL OR clips.lease_owner = excluded.lease_owner "
    "OR clips.lease_expires_at < :now"
)
# Only while the owner still holds it; an expired lease nobody has taken over is still held.
_RENEW_LEASE = (
    "UPDATE clips SET lease_expires_at = :expires "
    "WHERE job_id = :job_id AND clip_index = :clip_index AND lease_owner = :owner"
)


def _prediction_params(record: PredictionRecord) -> dict[str, Any]:
    params = record.model_dump(include=set(_PREDICTION_COLUMNS))
    params.update(job_id=str(record.job_id), created_at=time_text(record.created_at), updated_at=now_text())
    return params


def _has_prediction(conn: sqlite3.Connection, prediction_id: str) -> bool:
    row = conn.execute("SELECT 1 FROM clip_predictions WHERE prediction_id = ?", (prediction_id,)).fetchone()
    return row is not None


def _committed_spend(conn: sqlite3.Connection, job_id: UUID) -> float:
    """What the job's ledger commits: every row but void ones (intended included: it may be paid)."""
    row = conn.execute(
        "SELECT coalesce(sum(cost), 0.0) FROM clip_predictions WHERE job_id = ? AND status != 'void'",
        (str(job_id),),
    ).fetchone()
    return float(row[0])


def _lease_params(job_id: UUID, clip_index: int, owner: str, now: datetime, seconds: float) -> dict[str, Any]:
    return {
        "job_id": str(job_id),
        "clip_index": clip_index,
        "owner": owner,
        "now": time_text(now),
        "expires": time_text(now + timedelta(seconds=seconds)),
    }
