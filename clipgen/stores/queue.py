"""The durable job queue: one row per job in `video_jobs`, claimed by workers under a lease.

Anything can queue a job: `enqueue_job`, or an app's plain INSERT of `job_id` and `job` (every other column
has a default). A worker claims the oldest available job; the claim carries a random token and a lease. The
worker renews the lease while it works and finishes the job with its token. A worker that dies stops
renewing: once its lease expires, the next `claim_job` takes the job over (a new token, so the old worker can
neither renew nor finish it any more), until `max_attempts` claims have been spent; then the job is marked
failed ("abandoned") instead of being handed out again. A lease that expired while nobody took the job over
still holds: its worker may yet renew it or finish the job.

Both stores implement `JobQueue`: the local store in SQLite (one write transaction per claim), the Supabase
store through the functions of supabase/migrations/20261121010000_video_jobs.sql (`for update skip locked`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Protocol
from uuid import UUID

from pydantic import BaseModel

JobStatus = Literal["queued", "running", "succeeded", "failed"]

DEFAULT_MAX_ATTEMPTS = 3


class QueuedJob(BaseModel):
    """One row of the `video_jobs` table."""

    job_id: UUID
    job: dict[str, Any]  # the ClipPrompts JSON as submitted; validated by the consumer, not the store
    options: dict[str, Any] | None = None  # GenerationOptions JSON, or None = the worker's defaults
    status: JobStatus
    attempts: int  # claims so far
    max_attempts: int
    available_at: datetime  # not claimable before this (retry delay)
    claim_token: UUID | None = None  # identifies the current claim; changes at every claim
    claimed_by: str | None = None
    claimed_at: datetime | None = None
    lease_expires_at: datetime | None = None
    last_error: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


def abandoned_error(attempts: int) -> str:
    """The `last_error` of a job whose last claim's lease expired with no attempts left."""
    return f"abandoned: lease expired after {attempts} attempts"


def check_enqueue_args(max_attempts: int) -> None:
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, not {max_attempts}")


def check_lease(lease_seconds: float) -> None:
    if not lease_seconds > 0:
        raise ValueError(f"lease_seconds must be positive, not {lease_seconds}")


class JobQueue(Protocol):
    """A durable queue of jobs, claimed under leases. Every time is UTC and timezone-aware."""

    def enqueue_job(
        self,
        job_id: UUID,
        job: dict[str, Any],
        options: dict[str, Any] | None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> QueuedJob:
        """Queue a new job, or queue a finished one (succeeded/failed) again with attempts reset to 0 and
        last_error cleared; re-enqueueing a still-queued job replaces its job/options (and resets it the same
        way). A job `running` with an unexpired lease raises JobBusy (message names the job and says it is
        running). A `running` job whose lease expired may be re-enqueued; its old claim token stops holding.
        created_at is kept from the first enqueue."""
        ...

    def claim_job(self, worker: str, lease_seconds: float) -> QueuedJob | None:
        """Atomically take ONE claimable job, oldest created_at first, or None.

        Claimable: (status='queued' and available_at <= now) or (status='running' and lease_expires_at <
        now), and attempts < max_attempts. The claimed row becomes running, attempts+1, a NEW random
        claim_token, claimed_by=worker, claimed_at=now, lease_expires_at=now+lease. In the same transaction,
        rows running with an expired lease whose attempts >= max_attempts are marked failed with last_error
        'abandoned: lease expired after N attempts' so they stop being retried. Two concurrent callers never
        get the same job."""
        ...

    def renew_claim(self, job_id: UUID, claim_token: UUID, lease_seconds: float) -> bool:
        """Extend the lease to now+lease if the token still holds the claim (status running, same token);
        False otherwise."""
        ...

    def finish_job(
        self,
        job_id: UUID,
        claim_token: UUID,
        *,
        succeeded: bool,
        error: str | None = None,
        retry_after_seconds: float | None = None,
    ) -> JobStatus | None:
        """Record the end of a claim, only if the token still holds it (else return None, change nothing).

        succeeded → 'succeeded'. Failed: if retry_after_seconds is not None and attempts < max_attempts →
        'queued' with available_at = now + retry_after_seconds; otherwise 'failed'. last_error = error.
        Clears claim_token/lease_expires_at (claimed_by/claimed_at stay for the record). Returns the new
        status."""
        ...

    def queued_job(self, job_id: UUID) -> QueuedJob | None:
        """The row, or None."""
        ...
