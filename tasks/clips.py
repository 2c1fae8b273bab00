"""The clip and thumbnail tasks: a few lines around a clipgen function; the policy is in the decorator.

This module owns the clip-level retry policy: `generate_clip`'s decorator, with the worker's backoff put in
by `clip_task` when a run starts. The flow runs `clip_task(settings)` and sets nothing of its own. Each
attempt runs in `attempt_retried_by_task`, so nothing inside it retries in place on top of these retries
(clipgen/retrying.py; the budgets are in tasks/__init__.py).
"""

from __future__ import annotations

import atexit
import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any
from uuid import UUID

import httpx
from prefect import get_client, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.client.schemas.responses import ConcurrencyLimitWithLeaseResponse
from prefect.concurrency._leases import maintain_concurrency_lease
from prefect.context import TaskRunContext
from prefect.exceptions import ObjectNotFound
from prefect.tasks import Task, exponential_backoff

from clipgen.backends import Backends, backends_of_run
from clipgen.errors import is_retryable
from clipgen.job import Clip
from clipgen.pipeline import Attempt, job_work_dir, produce_clip, produce_thumbnail
from clipgen.planning import ClipPlan
from clipgen.retrying import attempt_retried_by_task
from clipgen.settings import Settings
from clipgen.slot_lending import SlotLender, SlotRefused

CLIP_RETRIES = 2  # 3 attempts
GLOBAL_SLOT_POLL_S = 0.25  # how often this process asks for a slot of a full global limit
SLOT_LEASE_S = 300.0  # Prefect's default: a crashed process's slot is free again after this
RETRY_JITTER = 0.5
# The first retry's delay unless the worker sets VIDEO_GENERATOR_RETRY_BACKOFF_SECONDS (see `clip_task`).
DEFAULT_BACKOFF_S: float = Settings.model_fields["retry_backoff_seconds"].default


def retry_delays(backoff_seconds: float) -> list[float]:
    """Exponential: backoff, 2 x backoff, ... (Prefect adds up to RETRY_JITTER of jitter)."""
    return exponential_backoff(backoff_factor=backoff_seconds)(CLIP_RETRIES)


def is_transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry only what may succeed next time; a permanent error or a bug fails at once."""
    return is_retryable(state.result(raise_on_failure=False))


def _context() -> tuple[TaskRunContext, Backends]:
    """The running task's context, and the provider and store its flow run opened."""
    context = TaskRunContext.get()
    if context is None or context.task_run.flow_run_id is None:
        raise RuntimeError("clip tasks run inside generate_video_clips, which opens their backends")
    return context, backends_of_run(context.task_run.flow_run_id)


@task(
    name="generate-clip",
    task_run_name="clip-{plan.clip_index}",
    retries=CLIP_RETRIES,
    retry_delay_seconds=retry_delays(DEFAULT_BACKOFF_S),
    retry_jitter_factor=RETRY_JITTER,
    retry_condition_fn=is_transient,
    cache_policy=NO_CACHE,  # every attempt must reach the pipeline, which knows what was already paid for
)
def generate_clip(plan: ClipPlan) -> Clip:
    """Generate, check, store and record one clip."""
    context, backends = _context()
    delays = context.task.retry_delay_seconds
    number = max(1, context.task_run.run_count)
    next_delay = float(delays[number - 1]) if isinstance(delays, list) and number <= len(delays) else 0.0
    with attempt_retried_by_task():  # this decorator's retries stand in for in-place ones
        return produce_clip(
            plan,
            backends.provider,
            backends.work.clip(plan),
            job_work_dir(backends.settings.work_dir, plan),
            Attempt(number=number, of=context.task.retries + 1, next_delay_s=next_delay),
            started_at=context.task_run.start_time,
        )


def clip_task(settings: Settings) -> Task[[ClipPlan], Clip]:
    """The clip task as a run uses it: the decorator's policy with the worker's backoff, read when the run
    starts. Prefect fixes a task's delays when the task is built (a callable `retry_delay_seconds` is called
    then, not at each retry), so a setting read at run time needs this copy; it is the only one."""
    return generate_clip.with_options(retry_delay_seconds=retry_delays(settings.retry_backoff_seconds))


def prediction_slot(limit: str | None, flow_run_id: UUID) -> Callable[[], AbstractContextManager[object]]:
    """A slot of the global concurrency limit for a paid prediction in flight, shared by every run and worker
    (`JobWork.in_flight` takes one per prediction, from its create to its end).

    Prefect leases the slot and renews it while it is held, so a crashed process gives it back. A clip done
    with its slot lends it to the next clip of this process that waits (clipgen/slot_lending.py), so the
    next create waits for no lease written on the server. Whether the limit exists is asked at the first
    slot, so a run that pays for nothing never asks; a limit that does not exist is skipped, with one warning
    per run that names the command creating it (Prefect would warn at every slot).
    """

    def slot() -> AbstractContextManager[object]:
        if not limit or not _limit_exists(flow_run_id, limit):
            return nullcontext()
        return _lender_of(limit).slot()

    return slot


@contextmanager
def _held_slot(limit: str) -> Iterator[None]:
    """One slot of `limit` taken from the server, its lease renewed until the block ends, then given back.

    One request, not Prefect's `concurrency` context: a full limit is asked again on this process's turn
    (clipgen/slot_lending.py) rather than by Prefect's retries, which sleep about a slot's average occupancy,
    and Prefect's own acquisition logs an error for every refusal. It runs in a keeper thread that outlives
    the clip that took the slot, so the lease is not left in the clip's task run, which would give it back
    when that run ends."""
    with get_client(sync_client=True) as client:
        try:
            response = client.increment_concurrency_slots_with_lease(
                names=[limit], slots=1, mode="concurrency", lease_duration=SLOT_LEASE_S
            )
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == 423:
                raise SlotRefused(limit) from exc
            raise
        lease_id = ConcurrencyLimitWithLeaseResponse.model_validate(response.json()).lease_id
        try:
            with maintain_concurrency_lease(lease_id, SLOT_LEASE_S):  # renewed, so a crash frees it
                yield
        finally:
            client.release_concurrency_slots_with_lease(lease_id)


_lenders: dict[str, SlotLender] = {}


def _lender_of(limit: str) -> SlotLender:
    with _limit_lock:
        if limit not in _lenders:
            _lenders[limit] = SlotLender(functools.partial(_held_slot, limit), GLOBAL_SLOT_POLL_S)
            atexit.register(_lenders[limit].close)  # its keepers are daemon threads: give their slots back
        return _lenders[limit]


_limit_lock = threading.Lock()


def _limit_exists(flow_run_id: UUID | None, name: str) -> bool:
    with _limit_lock:  # the run's clips start together: one asks, the others read its answer
        return _look_up_limit(flow_run_id, name)


@functools.lru_cache(maxsize=64)
def _look_up_limit(flow_run_id: UUID | None, name: str) -> bool:
    """Whether the limit exists, asked once per flow run (a limit created meanwhile counts from the next)."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            get_run_logger().warning(
                "Prefect has no concurrency limit %r, so paid predictions are capped by this run's "
                "concurrency only, not across runs and workers; `video-generator setup-prefect` creates "
                "it on the server at PREFECT_API_URL",
                name,
            )
            return False
    return True


@task(
    name="generate-thumbnail", task_run_name="thumbnail-{plan.clip_index}", retries=1, cache_policy=NO_CACHE
)
def generate_thumbnail(plan: ClipPlan) -> str:
    """First frame, 320x180 letterboxed JPEG, stored and announced."""
    _, backends = _context()
    with attempt_retried_by_task():
        return produce_thumbnail(plan, backends.store, job_work_dir(backends.settings.work_dir, plan))
