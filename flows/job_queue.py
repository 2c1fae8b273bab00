"""process_job_queue: claim queued jobs from the store and run the generator for several of them at once.

Deployed on a schedule (prefect.yaml: every minute). Jobs are queued by `video-generator submit JOB.json` or
by any app that inserts a row into `video_jobs`. Claims are atomic in the store, so any number of queue runs
on any number of workers take disjoint jobs; each claim is a lease, renewed while its job runs, so the job
of a run that crashed becomes claimable again once the lease expires.

A run holds as many jobs at once as its worker can (clipgen.queueing.jobs_at_once) and claims the next,
oldest first, as soon as one ends, so one job's last clips never leave the prediction limit idle while
others wait. Each job is a `generate_video_clips` subflow called inside a task of a ThreadPoolTaskRunner:
Prefect's supported way to run sync subflows concurrently (a subflow called from a task gets a tracking
task with a unique key; from bare threads, two subflows could be given the same one).
"""

from __future__ import annotations

import concurrent.futures
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from prefect import flow, get_client, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterName,
    FlowRunFilterParentFlowRunId,
)
from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext
from prefect.futures import PrefectConcurrentFuture, PrefectFuture, wait
from prefect.states import Cancelled, Completed
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from clipgen.backends import close_quietly, open_store, stop_runs_of_job
from clipgen.errors import ValidationError
from clipgen.queueing import (
    JobOutcome,
    LeaseKeeper,
    job_outcome,
    jobs_at_once,
    parse_queued_job,
    queue_of,
    queue_report,
)
from clipgen.run_parameters import WORKER_DEFAULT, ProviderName, StoreName, backend_name
from clipgen.settings import Settings
from clipgen.stores.queue import JobQueue, QueuedJob
from flows.video_generator import cancel_run_predictions, generate_video_clips

Running = dict[PrefectConcurrentFuture[JobOutcome], QueuedJob]
# With room for another job and the queue empty, how often a run asks again (for jobs queued since, or a
# retry now due) while its jobs run.
CLAIM_EVERY_S = 5.0
# How long a cancelled queue run waits for its stopped jobs' subflows to end, within the grace a worker
# gives a cancelled process before it kills it.
STOPPING_JOBS_WAIT_S = 20.0


@flow(name="process-video-job-queue", flow_run_name="video-job-queue", validate_parameters=True)
def process_job_queue(
    max_jobs: Annotated[int, Field(ge=1, le=1000)] = 10,
    provider: ProviderName = WORKER_DEFAULT,
    store: StoreName = WORKER_DEFAULT,
) -> State[list[JobOutcome]]:
    """Run up to `max_jobs` queued jobs, oldest first, several at once; stop when the queue is empty.

    Args:
        max_jobs: Jobs this run takes in all. It works on as many at once as the worker can hold
            (VIDEO_GENERATOR_QUEUE_JOBS_AT_ONCE), takes the next as soon as one ends, and stops when the
            queue is empty and its jobs have ended.
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
    at_once = min(jobs_at_once(settings.queue_jobs_at_once), max_jobs)
    get_run_logger().info("up to %d jobs at once", at_once)
    queue = queue_of(open_store(store, settings), store)
    try:
        outcomes = _run_jobs(queue, worker, max_jobs, at_once, provider, store, settings)
    finally:
        close_quietly(queue)
    return Completed(message=queue_report(outcomes), data=outcomes)


def _run_jobs(
    queue: JobQueue,
    worker: str,
    max_jobs: int,
    at_once: int,
    provider: str | None,
    store: str,
    settings: Settings,
) -> list[JobOutcome]:
    """Keep `at_once` jobs running: claim whenever there is room (not in batches), collect as they end."""
    outcomes: list[JobOutcome] = []
    parameters = {"queue": queue, "provider": provider, "store": store, "settings": settings}
    with ThreadPoolTaskRunner[JobOutcome](max_workers=at_once) as runner:
        jobs = _Jobs(queue, worker, settings.queue_lease_seconds, runner, parameters, at_once, max_jobs)
        try:
            while True:
                jobs.claim_while_room()
                if not jobs.running:
                    return outcomes
                outcomes += jobs.collect_ended()
        except BaseException as exc:
            jobs.stop(exc, settings)
            raise


@dataclass
class _Jobs:
    """The jobs one queue run works on: at most `at_once` at a time, `left` more to claim in all."""

    queue: JobQueue
    worker: str
    lease_s: float
    runner: ThreadPoolTaskRunner[JobOutcome]
    parameters: dict[str, Any]  # run_claimed_job's, but the claimed job
    at_once: int
    left: int
    running: Running = field(default_factory=dict)

    def has_room(self) -> bool:
        return len(self.running) < self.at_once and self.left > 0

    def claim_while_room(self) -> None:
        """Claim jobs one at a time, oldest first, starting each, while there is room."""
        while self.has_room():
            row = self.queue.claim_job(self.worker, self.lease_s)
            if row is None:  # empty for now: asked again soon, while its jobs run
                return
            self.left -= 1
            self.running[self.runner.submit(run_claimed_job, self.parameters | {"claimed": row})] = row

    def collect_ended(self) -> list[JobOutcome]:
        """The outcomes of the jobs that have ended, once one has, taken out of `running`. With room for
        another job, after CLAIM_EVERY_S at the most (maybe none), so that the queue is asked again."""
        ended = _ended(self.running, CLAIM_EVERY_S if self.has_room() else None)
        return [_outcome(future, self.running.pop(future)) for future in ended]

    def stop(self, exc: BaseException, settings: Settings) -> None:
        """Cancelled or terminated: the jobs' threads cannot be interrupted. Stop them and give their
        claims back first, then give their subflows (which end soon, their predictions cancelled) a moment
        to end, so that each run's own end does not overwrite its Cancelled state."""
        rows = list(self.running.values())
        _stop_jobs(self.queue, rows, exc, settings)
        wait(list(self.running), timeout=STOPPING_JOBS_WAIT_S)
        _best_effort("marking the jobs' runs cancelled", lambda: _cancel_subflows(rows, settle=False))


@task(name="run-queued-job", task_run_name="job-{claimed.job_id}", cache_policy=NO_CACHE)
def run_claimed_job(
    queue: JobQueue, claimed: QueuedJob, provider: str | None, store: str, settings: Settings
) -> JobOutcome:
    """One claimed job under its lease: its generator run is a subflow of the queue run."""
    logger = get_run_logger()
    logger.info("claimed job %s (attempt %d of %d)", claimed.job_id, claimed.attempts, claimed.max_attempts)
    with LeaseKeeper(queue, claimed, settings.queue_lease_seconds, logger):
        try:
            job, options = parse_queued_job(claimed)
        except ValidationError as exc:
            logger.error("job %s refused: %s", claimed.job_id, exc)
            outcome = job_outcome(claimed, False, None, exc)
        else:
            state = generate_video_clips(job, options, provider, store, return_state=True)
            outcome = job_outcome(
                claimed, state.is_completed(), state.message, state.result(raise_on_failure=False)
            )
    _finish(queue, claimed, outcome, settings)
    return outcome


def _ended(running: Running, timeout: float | None) -> list[PrefectConcurrentFuture[JobOutcome]]:
    """The jobs that have ended, once one has (or after `timeout`: maybe none)."""
    wrapped = {future.wrapped_future: future for future in running}
    done, _ = concurrent.futures.wait(wrapped, timeout, return_when=concurrent.futures.FIRST_COMPLETED)
    return [wrapped[future] for future in done]


def _outcome(future: PrefectFuture[JobOutcome], claimed: QueuedJob) -> JobOutcome:
    """The job's outcome; a task that raised (a bug, or the store failing at the end) ends as an error the
    queue retries once the lease lapses, since its claim may not have been finished."""
    future.wait()
    result = future.result(raise_on_failure=False)
    if isinstance(result, JobOutcome):
        return result
    get_run_logger().error("job %s ended with an error: %s", claimed.job_id, result)
    outcome = job_outcome(claimed, False, None, result)
    outcome.status = "lost"
    return outcome


def _stop_jobs(queue: JobQueue, rows: list[QueuedJob], exc: BaseException, settings: Settings) -> None:
    """The queue run is ending early: each job it holds starts no more clips, cancels what it has running
    (as the subflow's own cancel hook would) and goes back to the queue, now rather than at lease expiry."""
    for row in rows:
        stop_runs_of_job(row.job_id)
    for row in rows:
        _finish(queue, row, job_outcome(row, False, None, exc), settings)
    # The claims are back; a prediction left running ends on its own.
    _best_effort("cancelling the jobs' predictions", lambda: _cancel_subflows(rows, settle=True))


def _cancel_subflows(rows: list[QueuedJob], *, settle: bool) -> None:
    """Mark the jobs' subflows cancelled in Prefect; with `settle`, first cancel what each paid for and
    has running (as its own cancel hook would)."""
    run = FlowRunContext.get()
    if not rows or run is None or run.flow_run is None:
        return
    names = [f"video-clips-{row.job_id}" for row in rows]
    with get_client(sync_client=True) as client:
        subflows = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.flow_run.id]),
                name=FlowRunFilterName(any_=names),
            )
        )
        for subflow in subflows:
            if subflow.state is not None and subflow.state.is_cancelled():
                continue
            cancelled: State[None] = Cancelled(message="the queue run was cancelled; the job is queued again")
            if settle:
                cancel_run_predictions(generate_video_clips, subflow, cancelled)
            client.set_flow_run_state(subflow.id, cancelled, force=True)


def _best_effort(what: str, call: Callable[[], object]) -> None:
    try:
        call()
    except Exception:  # noqa: BLE001 - the run is ending anyway; say what was left undone
        get_run_logger().warning("%s failed", what, exc_info=True)


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
