"""What a queue run decides about a claimed job: is it valid, did it succeed, is it worth another run.

The claiming itself is the store's (clipgen/stores/queue.py); this module has no Prefect in it.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import pydantic

from clipgen.backends import allow_runs_of_job, stop_runs_of_job
from clipgen.errors import PermanentError, ValidationError
from clipgen.job import ClipPrompts, Clips, GenerationOptions
from clipgen.planning import pydantic_problems
from clipgen.stores.queue import JobQueue, QueuedJob

MAX_ERROR_CHARS = 2000

# How many jobs a queue run holds at once, when VIDEO_GENERATOR_QUEUE_JOBS_AT_ONCE does not say. A job in a
# queue run is threads in the run's process, so the imports (Prefect, pydantic, PyAV: 117 MB) are paid once
# per process, not per job. What a job adds at its peak is docs/benchmarks.md's peak for a 5-clip job of
# 1080p clips made from a scene image, 248 MB, less those imports: about 130 MB (five clips preparing the
# same image at once, and five probes and thumbnails); rounded up for heavier clips. A job mostly waits
# on predictions: its CPU is the downloads, probes, thumbnails and Prefect's bookkeeping of six or so tasks,
# a fraction of a core even when its clips finish seconds apart, so four jobs share a CPU. The run takes half
# of the memory available when it starts: the worker, its other flow runs (on-demand jobs, a second queue
# run) and the page cache need the rest. Spend is not bounded here: every prediction of every job holds a
# slot of the global prediction limit, so more jobs than the limit can serve only wait for slots.
JOB_PEAK_BYTES = 160 * 1024**2
MEMORY_SHARE = 0.5
JOBS_PER_CPU = 4
MAX_JOBS_AT_ONCE = 256  # the setting's bound


def jobs_at_once(setting: int | None) -> int:
    """Jobs a queue run works on at once: the setting, or what this machine can hold now."""
    if setting is not None:
        return setting
    return jobs_the_machine_holds(available_memory_bytes(), os.cpu_count())


def jobs_the_machine_holds(available_bytes: int | None, cpus: int | None) -> int:
    """The smaller of what memory and CPUs allow, at least one; an unknown figure does not limit."""
    by_memory = (
        MAX_JOBS_AT_ONCE if available_bytes is None else int(available_bytes * MEMORY_SHARE) // JOB_PEAK_BYTES
    )
    by_cpu = MAX_JOBS_AT_ONCE if cpus is None else cpus * JOBS_PER_CPU
    return max(1, min(by_memory, by_cpu, MAX_JOBS_AT_ONCE))


def available_memory_bytes(meminfo: str = "/proc/meminfo") -> int | None:
    """Linux's estimate of memory available to new work without swapping (MemAvailable); None elsewhere."""
    try:
        with open(meminfo, encoding="ascii") as lines:
            for line in lines:
                name, _, value = line.partition(":")
                if name == "MemAvailable":
                    return int(value.split()[0]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass
class JobOutcome:
    """How one claimed job ended. `status` is the job's status in the queue afterwards ('lost' when the claim
    had expired, so the row was no longer ours to update)."""

    job_id: str
    attempt: int
    succeeded: bool
    retry: bool
    error: str | None
    status: str = ""


def queue_of(store: object, name: str) -> JobQueue:
    """The store as a job queue; both built-in stores are."""
    needed = ("enqueue_job", "claim_job", "renew_claim", "finish_job", "queued_job")
    if not all(callable(getattr(store, method, None)) for method in needed):
        raise ValidationError.one(
            "store", f"store {name!r} does not hold a job queue (use local or supabase)"
        )
    return store  # type: ignore[return-value]  # checked structurally above


def parse_queued_job(row: QueuedJob) -> tuple[ClipPrompts, GenerationOptions | None]:
    """The job and options of a row, validated as `run` would; ValidationError names the bad field."""
    try:
        job = ClipPrompts.model_validate(row.job)
    except pydantic.ValidationError as exc:
        raise ValidationError(pydantic_problems(exc, prefix="job")) from exc
    if job.job_id != row.job_id:
        raise ValidationError.one(
            "job.job_id", f"{job.job_id} differs from the queued row's job_id {row.job_id}"
        )
    try:
        options = None if row.options is None else GenerationOptions.model_validate(row.options)
    except pydantic.ValidationError as exc:
        raise ValidationError(pydantic_problems(exc, prefix="options")) from exc
    return job, options


def job_outcome(row: QueuedJob, completed: bool, message: str | None, result: Any) -> JobOutcome:
    """Judge a run of the job. Refused input and permanent errors are not retried: the next run would
    fail the same way (and could pay again). Too few clips, transient errors and interruptions are."""
    if completed:
        return JobOutcome(str(row.job_id), row.attempts, succeeded=True, retry=False, error=None)
    if isinstance(result, Clips):
        error = message or f"{result.successful_clips}/{result.total_clips} clips"
        retry = True
    elif isinstance(result, BaseException):
        error = f"{type(result).__name__}: {result}"
        retry = not isinstance(result, (ValidationError, PermanentError))
    else:
        error, retry = message or "the run failed", True
    return JobOutcome(
        str(row.job_id), row.attempts, succeeded=False, retry=retry, error=error[:MAX_ERROR_CHARS]
    )


def queue_report(outcomes: list[JobOutcome]) -> str:
    if not outcomes:
        return "no queued jobs"
    counts: dict[str, int] = {}
    for outcome in outcomes:
        key = (
            "succeeded"
            if outcome.succeeded
            else ("requeued" if outcome.status == "queued" else outcome.status)
        )
        counts[key] = counts.get(key, 0) + 1
    parts = ", ".join(f"{count} {key}" for key, count in sorted(counts.items()))
    return f"{len(outcomes)} job{'s' if len(outcomes) != 1 else ''}: {parts}"


class LeaseKeeper:
    """Renews a claim every third of its lease while the job runs, from a daemon thread.

    A run that dies stops renewing, and the job becomes claimable again when the lease expires. A renewal
    refused by the store means the lease was lost (the run stalled for a whole lease): the job's run in this
    process is told to stop (clips not yet paid for are not started; what runs is left to the run that
    claimed the job), and the store will not let this run record the job's end.
    """

    def __init__(
        self,
        queue: JobQueue,
        row: QueuedJob,
        lease_seconds: float,
        logger: logging.Logger | logging.LoggerAdapter[Any],
    ) -> None:
        assert row.claim_token is not None
        self._queue, self._job_id, self._token = queue, row.job_id, row.claim_token
        self._every = lease_seconds / 3
        self._lease = lease_seconds
        self._logger = logger
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep, name=f"lease-{row.job_id}", daemon=True)

    def __enter__(self) -> Self:
        allow_runs_of_job(self._job_id)
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _keep(self) -> None:
        while not self._stop.wait(self._every):
            try:
                if not self._queue.renew_claim(self._job_id, self._token, self._lease):
                    self._logger.error("lost the claim on job %s; stopping work on it", self._job_id)
                    stop_runs_of_job(self._job_id)
                    return
            except Exception:  # a missed renewal is tried again at the next tick
                self._logger.warning("could not renew the claim on job %s", self._job_id, exc_info=True)
