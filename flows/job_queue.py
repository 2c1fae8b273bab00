"""process_job_queue: claim queued jobs from the store, one at a time, and run the generator for each.

Deployed on a schedule (prefect.yaml: every minute). Jobs are queued by `video-generator submit JOB.json` or
by any app that inserts a row into `video_jobs`. Claims are atomic in the store, so any number of queue runs
on any number of workers take disjoint jobs; each claim is a lease, renewed while its job runs, so the job
of a run that crashed becomes claimable again once the lease expires.
"""

from __future__ import annotations

import socket
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext
from prefect.states import Completed
from pydantic import Field

from clipgen.backends import close_quietly, open_store
from clipgen.errors import ValidationError
from clipgen.queueing import JobOutcome, LeaseKeeper, job_outcome, parse_queued_job, queue_of, queue_report
from clipgen.run_parameters import WORKER_DEFAULT, ProviderName, StoreName, backend_name
from clipgen.settings import Settings
from clipgen.stores.queue import JobQueue, QueuedJob
from flows.video_generator import generate_video_clips


@flow(name="process-video-job-queue", flow_run_name="video-job-queue", validate_parameters=True)
def process_job_queue(
    max_jobs: Annotated[int, Field(ge=1, le=1000)] = 10,
    provider: ProviderName = WORKER_DEFAULT,
    store: StoreName = WORKER_DEFAULT,
) -> State[list[JobOutcome]]:
    """Run up to `max_jobs` queued jobs, oldest first, and stop early when the queue is empty.

    Args:
        max_jobs: Jobs this run takes at most, one after another; it stops early when the queue is empty.
        provider: Where clips are made. `worker-default`: the worker's VIDEO_GENERATOR_PROVIDER (`local`
            unless set). `local`: the free preview renderer. `replicate`: the paid models on Replicate.
        store: Where the queue, clips and progress are kept. `worker-default`: the worker's
            VIDEO_GENERATOR_STORE (`local` unless set). `local`: files and SQLite in the worker's
            VIDEO_GENERATOR_DATA_DIR. `supabase`: Storage and Postgres.
    """
    settings = Settings()
    store = backend_name(store, settings.store)
    run = FlowRunContext.get()
    assert run is not None and run.flow_run is not None
    worker = f"{socket.gethostname()}/{run.flow_run.name}/{run.flow_run.id}"
    queue = queue_of(open_store(store, settings), store)
    outcomes: list[JobOutcome] = []
    try:
        for _ in range(max_jobs):
            claimed = queue.claim_job(worker, settings.queue_lease_seconds)
            if claimed is None:
                break
            outcomes.append(_process(queue, claimed, provider, store, settings))
    finally:
        close_quietly(queue)
    return Completed(message=queue_report(outcomes), data=outcomes)


def _process(
    queue: JobQueue, claimed: QueuedJob, provider: str | None, store: str, settings: Settings
) -> JobOutcome:
    logger = get_run_logger()
    logger.info("claimed job %s (attempt %d of %d)", claimed.job_id, claimed.attempts, claimed.max_attempts)
    with LeaseKeeper(queue, claimed, settings.queue_lease_seconds, logger):
        try:
            job, options = parse_queued_job(claimed)
        except ValidationError as exc:
            logger.error("job %s refused: %s", claimed.job_id, exc)
            outcome = job_outcome(claimed, False, None, exc)
        else:
            try:
                state = generate_video_clips(job, options, provider, store, return_state=True)
            except BaseException as exc:
                # Cancelled or terminated: give the claim back now rather than at lease expiry.
                _finish(queue, claimed, job_outcome(claimed, False, None, exc), settings)
                raise
            outcome = job_outcome(
                claimed, state.is_completed(), state.message, state.result(raise_on_failure=False)
            )
    _finish(queue, claimed, outcome, settings)
    return outcome


def _finish(queue: JobQueue, claimed: QueuedJob, outcome: JobOutcome, settings: Settings) -> None:
    assert claimed.claim_token is not None
    status = queue.finish_job(
        claimed.job_id,
        claimed.claim_token,
        succeeded=outcome.succeeded,
        error=outcome.error,
        retry_after_seconds=settings.queue_retry_delay_seconds if outcome.retry else None,
    )
    outcome.status = status or "lost"
    logger = get_run_logger()
    if status is None:
        logger.warning(
            "job %s: the claim expired before the run ended; another run may have it", claimed.job_id
        )
    else:
        logger.info("job %s is now %s", claimed.job_id, status)
