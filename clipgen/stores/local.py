"""A ClipStore on the local disk: files under `storage/<bucket>/`, records in one SQLite file (WAL).

Files are written through clipgen.files (atomic); requests are not retried here: SQLite waits for its lock
(busy timeout), and the callers own any retry (see tasks/__init__.py).
"""

from __future__ import annotations

import json
import sqlite3
import stat
import threading
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any
from uuid import UUID, uuid4

from clipgen.files import copy_file
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
    # 5: one owner of paid work. A clip's lease (owner run, _TIME_FORMAT expiry) replaces create_sent_at:
    # the intent now lives on the ledger as an 'intended' row. The ledger's status CHECK can only change by
    # rebuilding the table (SQLite cannot alter a constraint); ids are copied, so its order is kept.
    (
        "ALTER TABLE clips ADD COLUMN lease_owner TEXT",
        "ALTER TABLE clips ADD COLUMN lease_expires_at TEXT",
        "ALTER TABLE clips ADD COLUMN metadata TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata))",
        "ALTER TABLE clips ADD COLUMN failed_for_good INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE clips DROP COLUMN create_sent_at",
        """CREATE TABLE clip_predictions_v5 (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            prediction_id TEXT NOT NULL UNIQUE,
            job_id TEXT NOT NULL, clip_index INTEGER NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL,
            plan_fingerprint TEXT NOT NULL, run_id TEXT,
            status TEXT NOT NULL CHECK (status IN ('intended', 'void', 'created', 'succeeded', 'delivered',
                'rejected', 'abandoned', 'failed', 'canceled')),
            cost REAL NOT NULL DEFAULT 0, error TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)""",
        # 'unused' (a finished prediction whose output was never used) is now 'abandoned'.
        """INSERT INTO clip_predictions_v5
            SELECT id, prediction_id, job_id, clip_index, provider, model, plan_fingerprint, run_id,
                   CASE status WHEN 'unused' THEN 'abandoned' ELSE status END,
                   cost, error, created_at, updated_at
            FROM clip_predictions""",
        "DROP TABLE clip_predictions",
        "ALTER TABLE clip_predictions_v5 RENAME TO clip_predictions",
        "CREATE INDEX clip_predictions_job ON clip_predictions (job_id, id)",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)

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
        copy_file(source, dest)
        return StoredObject(bucket=bucket, path=path, url=self.signed_url(bucket, path))

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
        # mode="json": metadata is stored as the JSON the Supabase store would send (UUIDs, times as text).
        params = record.model_dump(mode="json", include=set(_CLIP_COLUMNS))
        params.update(
            metadata=json.dumps(params["metadata"]), created_at=_iso(record.created_at), updated_at=_now()
        )
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
        rows = self._job_rows("clips", (*_CLIP_COLUMNS, *_LEASE_COLUMNS, "created_at", "updated_at"), job_id)
        return [ClipRecord.model_validate({**row, "metadata": json.loads(row["metadata"])}) for row in rows]

    def thumbnail_records(self, job_id: UUID) -> list[ThumbnailRecord]:
        rows = self._job_rows("clip_thumbnails", (*_THUMBNAIL_COLUMNS, "created_at"), job_id)
        return [ThumbnailRecord.model_validate(row) for row in rows]

    def record_prediction(self, record: PredictionRecord) -> None:
        with closing(self._connect()) as conn, conn:
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

    def _write(self) -> sqlite3.Connection:
        """A connection inside BEGIN IMMEDIATE: it holds SQLite's single write lock from its first read, so
        no other thread or process writes between what it reads and what it writes."""
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")  # waits up to the busy timeout for the write lock
        except BaseException:
            conn.close()
            raise
        return conn

    # -- paid work: budget reservations on the ledger, clip leases ------------------------------------
    # Each call is one _write() transaction, so two runs of a job can neither both take the last of its
    # budget nor both take one clip. Times are this machine's clock (UTC, _TIME_FORMAT: text order is time
    # order), which every process sharing this file shares.

    def reserve_prediction(self, record: PredictionRecord, budget_usd: float | None) -> bool:
        with closing(self._write()) as conn, conn:
            if _has_prediction(conn, record.prediction_id):
                return True  # a repeated call: this intent was reserved already (the Supabase store's retry)
            committed = _committed_spend(conn, record.job_id)
            if budget_usd is not None and committed + record.cost > budget_usd + _SPEND_EPSILON:
                return False
            conn.execute(_UPSERT_PREDICTION, _prediction_params(record))
            return True

    def resolve_intent(self, intent_id: str, record: PredictionRecord) -> None:
        params = _prediction_params(record)
        with closing(self._write()) as conn, conn:
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

    # -- job queue (clipgen/stores/queue.py): each operation is one _write() transaction, so no other
    # thread or process can claim, finish or re-queue the same row in between.

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
    params.update(job_id=str(record.job_id), created_at=_iso(record.created_at), updated_at=_now())
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
        "now": _iso(now),
        "expires": _iso(now + timedelta(seconds=seconds)),
    }


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
