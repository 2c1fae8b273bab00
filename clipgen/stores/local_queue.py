"""The local store's job queue: this module owns the SQLite implementation of clipgen/stores/queue.py's
JobQueue (the video_jobs table, created by clipgen/stores/local_db.py's migrations)."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from clipgen.errors import JobBusy
from clipgen.stores.local_db import LocalDatabase, now_text, time_text
from clipgen.stores.queue import (
    DEFAULT_MAX_ATTEMPTS,
    JobStatus,
    QueuedJob,
    check_enqueue_args,
    check_lease,
)


class LocalJobQueue(LocalDatabase):
    """The job queue (clipgen/stores/queue.py): each operation is one _write() transaction, so no other
    thread or process can claim, finish or re-queue the same row in between."""

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
            now = now_text()  # read under the write lock: no claim can happen between this and the write
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
            conn.execute(_ABANDON, {"now": time_text(now)})
            picked = conn.execute(_PICK, {"now": time_text(now)}).fetchone()
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
                    "now": time_text(now),
                    "lease": time_text(now + timedelta(seconds=lease_seconds)),
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
                (
                    time_text(now + timedelta(seconds=lease_seconds)),
                    time_text(now),
                    str(job_id),
                    str(claim_token),
                ),
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
                available_at = time_text(now + timedelta(seconds=max(retry_after_seconds, 0.0)))
            else:
                status = "failed"
            conn.execute(
                "UPDATE video_jobs SET status = ?, available_at = ?, last_error = ?, claim_token = NULL, "
                "lease_expires_at = NULL, updated_at = ? WHERE job_id = ?",
                (status, available_at, error, time_text(now), str(job_id)),
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
