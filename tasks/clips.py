"""The clip and thumbnail tasks: a few lines around a clipgen function; the policy is in the decorator.

This module owns the clip-level retry policy: `generate_clip`'s decorator, with the worker's backoff put in
by `clip_task` when a run starts. The flow runs `clip_task(settings)` and sets nothing of its own. Each
attempt runs in `attempt_retried_by_task`, so nothing inside it retries in place on top of these retries
(clipgen/retrying.py; the budgets are in tasks/__init__.py).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any
from uuid import UUID

from prefect import get_client, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.concurrency.sync import concurrency
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

CLIP_RETRIES = 2  # 3 attempts
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
            slot=prediction_slot(backends, context.task_run.flow_run_id),
        )


def clip_task(settings: Settings) -> Task[[ClipPlan], Clip]:
    """The clip task as a run uses it: the decorator's policy with the worker's backoff, read when the run
    starts. Prefect fixes a task's delays when the task is built (a callable `retry_delay_seconds` is called
    then, not at each retry), so a setting read at run time needs this copy; it is the only one."""
    return generate_clip.with_options(retry_delay_seconds=retry_delays(settings.retry_backoff_seconds))


def prediction_slot(
    backends: Backends, flow_run_id: UUID | None
) -> Callable[[], AbstractContextManager[object]]:
    """A slot of the global concurrency limit for each paid prediction, shared by every run and worker.

    Prefect leases the slot and renews it while it is held, so a crashed process gives it back. A limit
    that does not exist is skipped, with one warning per run that names the command creating it (Prefect
    would warn at every slot); the local renderer calls nothing paid and takes no slot.
    """
    name = backends.settings.prediction_limit
    if not name or not backends.provider.paid or not _limit_exists(flow_run_id, name):
        return nullcontext
    return functools.partial(concurrency, name, occupy=1)


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
