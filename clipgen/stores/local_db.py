"""The local store's SQLite file: this module owns its schema (migrations), its connections and the text
form of the times it stores.

Requests are not retried here: SQLite waits for its lock (busy timeout), and the callers own any retry.
"""

from __future__ import annotations

import sqlite3
import threading
import weakref
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

from clipgen.stores.queue import DEFAULT_MAX_ATTEMPTS

DB_FILENAME = "video_generator.db"

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


def now_text() -> str:
    """Now, as the stored text of a time (_TIME_FORMAT)."""
    return time_text(datetime.now(UTC))


def time_text(value: datetime | None) -> str:
    """`value` as the stored text of a time (_TIME_FORMAT); None is now."""
    if value is None:
        return now_text()
    # A naive datetime is taken to be UTC, so every stored timestamp carries its offset.
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).strftime(_TIME_FORMAT)


class LocalDatabase:
    """One SQLite connection per operation (thread- and process-safe); the schema is brought up to date on
    the first.

    Two settings make a write cost under a millisecond instead of 2.6 ms, and 10-60 ms on a busy machine
    (measured on ext4, docs/benchmarks.md):
    - `synchronous = NORMAL`: in WAL mode a commit is appended to the log and the log is synced at
      checkpoints, not at every commit. A committed write survives the process crashing or being killed
      (it is in the OS's page cache); only the machine losing power may roll the last commits back, never
      corrupting the file. The ledger's writes, which record money, ask FULL (`durable=True`): a paid
      request is on disk before the create is sent.
    - One connection stays open for the store's life: when the last connection to a WAL
      database closes, SQLite checkpoints the log into the database and deletes it, with an fsync, which
      with a connection per operation would happen after nearly every operation.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.db_path = self.data_dir / DB_FILENAME
        self._ready = False
        self._ready_lock = threading.Lock()

    def _connect(self, durable: bool = False) -> sqlite3.Connection:
        self._ensure_schema()
        return self._open(durable)

    def _open(self, durable: bool = False) -> sqlite3.Connection:
        # timeout= is SQLite's busy timeout: writers from other threads/processes wait instead of failing.
        # IMMEDIATE takes the write lock at BEGIN, so a write never has to upgrade a stale read snapshot
        # (which in WAL fails with "database is locked" without waiting).
        conn = sqlite3.connect(self.db_path, timeout=10.0, isolation_level="IMMEDIATE")
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")  # see the class docstring
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
            # Never used for a query. Closed when the store is collected (explicitly: Python 3.13 warns
            # about a connection left to the garbage collector), on whichever thread that happens.
            keeper = sqlite3.connect(self.db_path, timeout=10.0, check_same_thread=False)
            keeper.execute("SELECT count(*) FROM sqlite_master").fetchone()  # SQLite opens files lazily
            weakref.finalize(self, keeper.close)
            self._ready = True

    def _write(self, durable: bool = False) -> sqlite3.Connection:
        """A connection inside BEGIN IMMEDIATE: it holds SQLite's single write lock from its first read, so
        no other thread or process writes between what it reads and what it writes. `durable`: its commit
        is synced to disk before it returns (see the class docstring)."""
        conn = self._connect(durable)
        try:
            conn.execute("BEGIN IMMEDIATE")  # waits up to the busy timeout for the write lock
        except BaseException:
            conn.close()
            raise
        return conn
