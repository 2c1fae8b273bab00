"""A ClipStore on the local disk: files under `storage/<bucket>/`, records in one SQLite file (WAL)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
import threading
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any
from uuid import UUID, uuid4

from clipgen.stores.base import (
    BUCKETS,
    ClipRecord,
    PredictionRecord,
    StoredEvent,
    StoredObject,
    ThumbnailRecord,
)
from clipgen.stores.queue import (
    DEFAULT_MAX_ATTEMPTS,
    JobBusy,
    JobStatus,
    QueuedJob,
    check_enqueue_args,
    check_lease,
)

DB_FILENAME = "video_generator.db"
STORAGE_DIRNAME = "storage"

# One fixed shape for every stored time, so text order is time order. (datetime.isoformat() drops the
# microseconds when they are 0, and "...:05+00:00" sorts after "...:05.5+00:00".)
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%f+00:00"
# The same shape from SQLite's clock, for column defaults (SQLite has milliseconds: pad to microseconds).
_SQL_NOW = "(strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000+00:00')"

# Each entry upgrades the schema by one version (recorded in PRAGMA user_version). Append, never edit:
# a database already at version N only runs the entries after N. Names are shared with the Postgres store.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE IF NOT EXISTS clips (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id TEXT NOT NULL, clip_index INTEGER NOT NULL, status TEXT NOT NULL, model TEXT NOT NULL,
            prediction_id TEXT, attempts INTEGER NOT NULL DEFAULT 0,
            requested_duration REAL, target_duration REAL, actual_duration REAL,
            width INTEGER, height INTEGER, fps REAL, video_path TEXT, cost REAL NOT NULL DEFAULT 0,
            error TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
            UNIQUE (job_id, clip_index))""",
        """CREATE TABLE IF NOT EXISTS clip_thumbnails (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id TEXT NOT NULL, clip_index INTEGER NOT NULL,
            thumbnail_path TEXT NOT NULL, thumbnail_url TEXT NOT NULL, created_at TEXT NOT NULL,
            UNIQUE (job_id, clip_index))""",
        # AUTOINCREMENT so ids are never reused: SSE clients resume with "after the last id I saw".
        """CREATE TABLE IF NOT EXISTS job_events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id TEXT NOT NULL, event TEXT NOT NULL, data TEXT NOT NULL, created_at TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS job_events_job_id_id ON job_events (job_id, id)",
    ),
    # 2: the job queue (clipgen/stores/queue.py). Every column but job_id and job has a default, so an app
    # can queue a job with `INSERT INTO video_jobs (job_id, job) VALUES ('<lowercase uuid>', '{...}')`.
    # Times are _TIME_FORMAT text (the default writes the same shape), so comparing strings compares times.
    (
        f"""CREATE TABLE IF NOT EXISTS video_jobs (
            job_id TEXT PRIMARY KEY CHECK (length(job_id) = 36 AND job_id = lower(job_id)),
            job TEXT NOT NULL CHECK (json_type(job) = 'object'),
            options TEXT CHECK (options IS NULL OR json_type(options) = 'object'),
            status TEXT NOT NULL DEFAULT 'queued'
                CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
            attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
            max_attempts INTEGER NOT NULL DEFAULT {DEFAULT_MAX_ATTEMPTS} CHECK (max_attempts > 0),
            available_at TEXT NOT NULL DEFAULT {_SQL_NOW},
            claim_token TEXT, claimed_by TEXT, claimed_at TEXT, lease_expires_at TEXT, last_error TEXT,
            created_at TEXT NOT NULL DEFAULT {_SQL_NOW}, updated_at TEXT NOT NULL DEFAULT {_SQL_NOW})""",
        "CREATE INDEX IF NOT EXISTS video_jobs_claim ON video_jobs (status, created_at)",
    ),
    # 3: the prediction ledger (every paid request, so none is paid twice or left running) and the plan a
    # stored clip was made for (so a rerun reuses it instead of paying again).
    (
        """CREATE TABLE IF NOT EXISTS clip_predictions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            prediction_id TEXT NOT NULL UNIQUE,
            job_id TEXT NOT NULL, clip_index INTEGER NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL,
            plan_fingerprint TEXT NOT NULL, run_id TEXT,
            status TEXT NOT NULL
                CHECK (status IN ('created', 'delivered', 'rejected', 'unused', 'failed', 'canceled')),
            cost REAL NOT NULL DEFAULT 0, error TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS clip_predictions_job ON clip_predictions (job_id, id)",
        "ALTER TABLE clips ADD COLUMN plan_fingerprint TEXT",
    ),
    # 4: the intent written before each paid create (ClipRecord.create_sent_at), _TIME_FORMAT text.
    ("ALTER TABLE clips ADD COLUMN create_sent_at TEXT",),
)
SCHEMA_VERSION = len(_MIGRATIONS)

_CLIP_COLUMNS = (
    "job_id", "clip_index", "status", "model", "prediction_id", "attempts", "requested_duration",
    "target_duration", "actual_duration", "width", "height", "fps", "video_path", "cost", "error",
    "plan_fingerprint", "create_sent_at",
)  # fmt: skip
_PREDICTION_COLUMNS = (
    "prediction_id", "job_id", "clip_index", "provider", "model", "plan_fingerprint", "run_id", "status",
    "cost", "error",
)  # fmt: skip
_THUMBNAIL_COLUMNS = ("job_id", "clip_index", "thumbnail_path", "thumbnail_url")


def _now() -> str:
    return _iso(datetime.now(UTC))


def _iso(value: datetime | None) -> str:
    if value is None:
        return _now()
    # A naive datetime is taken to be UTC, so every stored timestamp carries its offset.
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).strftime(_TIME_FORMAT)


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


class LocalStore:
    """Thread- and process-safe: one SQLite connection per operation, files swapped in with os.replace."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.storage_dir = self.data_dir / STORAGE_DIRNAME
        self.db_path = self.data_dir / DB_FILENAME
        self._ready = False
        self._ready_lock = threading.Lock()

    # -- files ---------------------------------------------------------------------------------------

    def _object_path(self, bucket: str, path: str) -> Path:
        if bucket not in BUCKETS:
            raise ValueError(f"unknown bucket {bucket!r}; expected one of {BUCKETS}")
        parts = PurePosixPath(path).parts
        if not parts or PurePosixPath(path).is_absolute() or ".." in parts or "\\" in path:
            raise ValueError(f"object path must be a relative POSIX path without '..': {path!r}")
        return self.storage_dir / bucket / Path(*parts)

    def put_object(self, bucket: str, path: str, source: Path, content_type: str) -> StoredObject:
        # content_type only matters to HTTP-serving stores; a local file has none to keep.
        dest = self._object_path(bucket, path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(source, "rb") as src:  # opened first: a missing source fails before any temp file exists
            # The temp file sits in the destination directory so os.replace is a same-filesystem rename:
            # readers see the old file or the whole new one, never a partial copy.
            fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as tmp:
                    shutil.copyfileobj(src, tmp, 1024 * 1024)
                    tmp.flush()
                    os.fsync(tmp.fileno())
                os.replace(tmp_name, dest)
            except BaseException:
                Path(tmp_name).unlink(missing_ok=True)
                raise
        return StoredObject(bucket=bucket, path=path, url=self.signed_url(bucket, path))

    def signed_url(self, bucket: str, path: str) -> str:
        target = self._object_path(bucket, path)
        if not target.is_file():
            raise FileNotFoundError(f"no object {path!r} in bucket {bucket!r}")
        return target.resolve().as_uri()

    # -- records -------------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        self._ensure_schema()
        return self._open()

    def _open(self) -> sqlite3.Connection:
        # timeout= is SQLite's busy timeout: writers from other threads/processes wait instead of failing.
        # IMMEDIATE takes the write lock at BEGIN, so a write never has to upgrade a stale read snapshot
        # (which in WAL fails with "database is locked" without waiting).
        conn = sqlite3.connect(self.db_path, timeout=10.0, isolation_level="IMMEDIATE")
        conn.row_factory = sqlite3.Row
        return conn

    def _ensure_schema(self) -> None:
        if self._ready:
            return
        with self._ready_lock:
            if self._ready:
                return
            self.data_dir.mkdir(parents=True, exist_ok=True)
            with closing(self._open()) as conn:
                # WAL is persistent in the file; it lets the SSE server read while the flow writes.
                conn.execute("PRAGMA journal_mode=WAL")
                with conn:
                    # Explicit BEGIN: Python does not open transactions for DDL, and two processes may
                    # migrate at once; the write lock makes the second see the first's user_version.
                    conn.execute("BEGIN IMMEDIATE")
                    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
                    if version > SCHEMA_VERSION:
                        raise RuntimeError(
                            f"{self.db_path} has schema version {version}, newer than this code's "
                            f"{SCHEMA_VERSION}"
                        )
                    for statements in _MIGRATIONS[version:]:
                        for statement in statements:
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._ready = True

    def upsert_clip(self, record: ClipRecord) -> None:
        params = record.model_dump(include=set(_CLIP_COLUMNS))
        params.update(job_id=str(record.job_id), created_at=_iso(record.created_at), updated_at=_now())
        if record.create_sent_at is not None:
            params["create_sent_at"] = _iso(record.create_sent_at)
        with closing(self._connect()) as conn, conn:
            conn.execute(_UPSERT_CLIP, params)

    def upsert_thumbnail(self, record: ThumbnailRecord) -> None:
        params = record.model_dump(include=set(_THUMBNAIL_COLUMNS))
        params.update(job_id=str(record.job_id), created_at=_iso(record.created_at))
        with closing(self._connect()) as conn, conn:
            conn.execute(_UPSERT_THUMBNAIL, params)

    def append_event(self, job_id: UUID, event: str, data: dict[str, Any]) -> int:
        # default=str: UUIDs, datetimes and Paths in progress payloads become strings instead of raising.
        payload = json.dumps(data, default=str)
        with closing(self._connect()) as conn, conn:
            cursor = conn.execute(
                "INSERT INTO job_events (job_id, event, data, created_at) VALUES (?, ?, ?, ?)",
                (str(job_id), event, payload, _now()),
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
        rows = self._job_rows("clips", (*_CLIP_COLUMNS, "created_at", "updated_at"), job_id)
        return [ClipRecord.model_validate(row) for row in rows]

    def thumbnail_records(self, job_id: UUID) -> list[ThumbnailRecord]:
        rows = self._job_rows("clip_thumbnails", (*_THUMBNAIL_COLUMNS, "created_at"), job_id)
        return [ThumbnailRecord.model_validate(row) for row in rows]

    def record_prediction(self, record: PredictionRecord) -> None:
        params = record.model_dump(include=set(_PREDICTION_COLUMNS))
        params.update(job_id=str(record.job_id), created_at=_iso(record.created_at), updated_at=_now())
        with closing(self._connect()) as conn, conn:
            conn.execute(_UPSERT_PREDICTION, params)

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

    # -- job queue (clipgen/stores/queue.py) ---------------------------------------------------------
    # Each operation is one BEGIN IMMEDIATE transaction: it holds SQLite's single write lock from its first
    # read, so no other thread or process can claim, finish or re-queue the same row in between.

    def _write(self) -> sqlite3.Connection:
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")  # waits up to the busy timeout for the write lock
        except BaseException:
            conn.close()
            raise
        return conn

    def enqueue_job(
        self,
        job_id: UUID,
        job: dict[str, Any],
        options: dict[str, Any] | None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> QueuedJob:
        check_enqueue_args(max_attempts)
        params = {
            "job_id": str(job_id),
            "job": json.dumps(job),
            "options": None if options is None else json.dumps(options),
            "max_attempts": max_attempts,
        }
        with closing(self._write()) as conn, conn:
            now = _now()  # read under the write lock: no claim can happen between this and the write
            current = conn.execute(
                "SELECT status, claimed_by, lease_expires_at FROM video_jobs WHERE job_id = ?",
                (str(job_id),),
            ).fetchone()
            if current is None:
                conn.execute(
                    "INSERT INTO video_jobs (job_id, job, options, max_attempts, available_at, created_at, "
                    "updated_at) VALUES (:job_id, :job, :options, :max_attempts, :now, :now, :now)",
                    {**params, "now": now},
                )
            elif (
                current["status"] == "running"
                and current["lease_expires_at"] is not None
                and current["lease_expires_at"] >= now
            ):
                raise JobBusy(
                    f"job {job_id} is running (claimed by {current['claimed_by']}, lease expires at "
                    f"{current['lease_expires_at']}); queue it again once it has finished"
                )
            else:
                conn.execute(_REQUEUE, {**params, "now": now})
            return _written_job(conn, job_id)

    def claim_job(self, worker: str, lease_seconds: float) -> QueuedJob | None:
        check_lease(lease_seconds)
        with closing(self._write()) as conn, conn:
            now = datetime.now(UTC)
            conn.execute(_ABANDON, {"now": _iso(now)})
            picked = conn.execute(_PICK, {"now": _iso(now)}).fetchone()
            if picked is None:
                return None
            conn.execute(
                "UPDATE video_jobs SET status = 'running', attempts = attempts + 1, claim_token = :token, "
                "claimed_by = :worker, claimed_at = :now, lease_expires_at = :lease, updated_at = :now "
                "WHERE job_id = :job_id",
                {
                    "job_id": picked["job_id"],
                    "token": str(uuid4()),
                    "worker": worker,
                    "now": _iso(now),
                    "lease": _iso(now + timedelta(seconds=lease_seconds)),
                },
            )
            return _written_job(conn, picked["job_id"])

    def renew_claim(self, job_id: UUID, claim_token: UUID, lease_seconds: float) -> bool:
        check_lease(lease_seconds)
        with closing(self._write()) as conn, conn:
            now = datetime.now(UTC)
            cursor = conn.execute(
                "UPDATE video_jobs SET lease_expires_at = ?, updated_at = ? "
                "WHERE job_id = ? AND status = 'running' AND claim_token = ?",
                (_iso(now + timedelta(seconds=lease_seconds)), _iso(now), str(job_id), str(claim_token)),
            )
            return cursor.rowcount == 1

    def finish_job(
        self,
        job_id: UUID,
        claim_token: UUID,
        *,
        succeeded: bool,
        error: str | None = None,
        retry_after_seconds: float | None = None,
    ) -> JobStatus | None:
        with closing(self._write()) as conn, conn:
            now = datetime.now(UTC)
            held = conn.execute(
                "SELECT attempts, max_attempts, available_at FROM video_jobs "
                "WHERE job_id = ? AND status = 'running' AND claim_token = ?",
                (str(job_id), str(claim_token)),
            ).fetchone()
            if held is None:
                return None
            status: JobStatus
            available_at = held["available_at"]
            if succeeded:
                status = "succeeded"
            elif retry_after_seconds is not None and held["attempts"] < held["max_attempts"]:
                status = "queued"
                available_at = _iso(now + timedelta(seconds=max(retry_after_seconds, 0.0)))
            else:
                status = "failed"
            conn.execute(
                "UPDATE video_jobs SET status = ?, available_at = ?, last_error = ?, claim_token = NULL, "
                "lease_expires_at = NULL, updated_at = ? WHERE job_id = ?",
                (status, available_at, error, _iso(now), str(job_id)),
            )
            return status

    def queued_job(self, job_id: UUID) -> QueuedJob | None:
        with closing(self._connect()) as conn:
            row = _job_row(conn, job_id)
        return None if row is None else _queued_job(row)


# Re-queue a job that is not running under a live lease: a fresh start that keeps created_at (its place).
_REQUEUE = (
    "UPDATE video_jobs SET job = :job, options = :options, max_attempts = :max_attempts, status = 'queued', "
    "attempts = 0, available_at = :now, claim_token = NULL, claimed_by = NULL, claimed_at = NULL, "
    "lease_expires_at = NULL, last_error = NULL, updated_at = :now WHERE job_id = :job_id"
)
# Claims whose lease expired with no attempts left: failed, so they are not handed out again.
_ABANDON = (
    "UPDATE video_jobs SET status = 'failed', "
    "last_error = 'abandoned: lease expired after ' || attempts || ' attempts', "
    "claim_token = NULL, lease_expires_at = NULL, updated_at = :now "
    "WHERE status = 'running' AND lease_expires_at < :now AND attempts >= max_attempts"
)
_PICK = (
    "SELECT job_id FROM video_jobs "
    "WHERE ((status = 'queued' AND available_at <= :now) "
    "OR (status = 'running' AND lease_expires_at < :now)) "
    "AND attempts < max_attempts ORDER BY created_at, rowid LIMIT 1"  # rowid: insertion order on a tie
)


def _job_row(conn: sqlite3.Connection, job_id: UUID | str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM video_jobs WHERE job_id = ?", (str(job_id),)
    ).fetchone()
    return row


def _written_job(conn: sqlite3.Connection, job_id: UUID | str) -> QueuedJob:
    """The row this transaction has just written."""
    row = _job_row(conn, job_id)
    assert row is not None
    return _queued_job(row)


def _queued_job(row: sqlite3.Row) -> QueuedJob:
    fields = dict(row)
    fields["job"] = json.loads(row["job"])
    fields["options"] = None if row["options"] is None else json.loads(row["options"])
    return QueuedJob.model_validate(fields)
