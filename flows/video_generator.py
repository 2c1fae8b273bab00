"""generate_video_clips: fan the clip task out over the job, collect as clips finish, decide the final state.

Orchestration only; every step is a clipgen function. Run it as a script too:
    python flows/video_generator.py examples/job.json
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any
from uuid import UUID

from prefect import Flow, flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.client.schemas.objects import FlowRun, State
from prefect.context import FlowRunContext
from prefect.events import emit_event
from prefect.futures import PrefectFuture, as_completed, wait
from prefect.states import Completed, Failed
from prefect.task_runners import ThreadPoolTaskRunner

from clipgen import events
from clipgen.backends import Backends, close_quietly, open_provider, open_store, run_backends
from clipgen.job import Clip, ClipPrompts, Clips, GenerationOptions
from clipgen.job_report import (
    Announced,
    Outcome,
    announce_end,
    announce_progress,
    announce_start,
    clip_table,
    decide_outcome,
)
from clipgen.model_lookup import schema_for_run
from clipgen.paid_work import JobWork
from clipgen.pipeline import failed_clip, job_work_dir, tidy_work_dir
from clipgen.planning import ClipPlan, JobPlan, plan_job
from clipgen.references import reference_resolver
from clipgen.run_parameters import (
    WORKER_DEFAULT,
    OptionsParameter,
    ProviderName,
    StoreName,
    backend_name,
    options_for_run,
)
from clipgen.settings import Settings
from clipgen.stores.base import ClipStore
from flows.progress_artifact import progress_artifact
from tasks.clips import clip_task, generate_thumbnail, prediction_slot

THUMBNAIL_WORKERS = 2
CLIP_THREADS_PER_SLOT = 2  # one follows a prediction, one downloads, checks and stores the one before
DEFAULT_OPTIONS = GenerationOptions()
"""Sets no option, so each takes the worker's setting; the run form shows the built-in defaults."""


def cancel_run_predictions(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """State hook (cancelled, crashed): nothing this run paid for keeps running on the provider.

    The flow's own `finally` does this when it can; a hook also runs when the run was stopped from outside
    (a cancel in the UI kills the process; the worker or `serve` runs the hook afterwards).
    """
    settings = Settings()
    parameters = flow_run.parameters
    job_id = UUID(str((parameters.get("job") or {}).get("job_id")))
    provider_name = backend_name(parameters.get("provider"), settings.provider)
    store_name = backend_name(parameters.get("store"), settings.store)
    provider, store = open_provider(provider_name, settings), open_store(store_name, settings)
    try:
        JobWork(store, provider, owner=str(flow_run.id)).settle_at_end(job_id, run_started=None)
    finally:
        close_quietly(provider)
        close_quietly(store)


@flow(
    name="generate-video-clips",
    flow_run_name="video-clips-{job.job_id}",
    validate_parameters=True,
    on_cancellation=[cancel_run_predictions],
    on_crashed=[cancel_run_predictions],
)
def generate_video_clips(
    job: ClipPrompts,
    options: OptionsParameter = DEFAULT_OPTIONS,
    provider: ProviderName = WORKER_DEFAULT,
    store: StoreName = WORKER_DEFAULT,
) -> State[Clips]:
    """Generate every clip of a job; Completed with at least min_success clips, Failed otherwise.

    Args:
        job: The job: a job_id (any UUID; the same id again reuses the clips it has) and its clip prompts.
            To paste a whole job as JSON, choose "Use JSON input" in this field's menu (⋮) and replace the
            editor's contents; its images must be https URLs or store:// references, not file paths.
        options: How to generate the job. Options left out (e.g. by an API call) take the worker's
            VIDEO_GENERATOR_* settings; the form sends the values it shows.
        provider: Where clips are made. `worker-default`: the worker's VIDEO_GENERATOR_PROVIDER (`local`
            unless set; it may name a provider of its own, `module:factory`). `local`: the preview renderer,
            free, no network. `replicate`: the models on Replicate, paid, with the worker's
            REPLICATE_API_TOKEN.
        store: Where clips, thumbnails and progress are kept. `worker-default`: the worker's
            VIDEO_GENERATOR_STORE (`local` unless set; it may name a store of its own). `local`: files and
            SQLite in the worker's VIDEO_GENERATOR_DATA_DIR. `supabase`: Storage and Postgres, with the
            worker's SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY.
    """
    settings = Settings()
    options = options_for_run(options, settings)
    provider = backend_name(provider, settings.provider)
    store = backend_name(store, settings.store)
    plan = _plan(job, options, provider, store, settings)
    run_context = FlowRunContext.get()
    assert run_context is not None and run_context.flow_run is not None
    run = run_context.flow_run
    with run_backends(
        run.id,
        provider,
        store,
        settings,
        job_id=plan.job_id,
        budget_usd=plan.budget_usd,
        retry_failed=options.retry_failed,
        concurrency=plan.concurrency,
        prediction_slot=prediction_slot(settings.prediction_limit, run.id),
    ) as backends:
        result, outcome = _generate(plan, backends, settings, str(run.id), run.start_time)
    if outcome.succeeded:
        return Completed(message=outcome.message, data=result)
    return Failed(message=outcome.message, data=result)


def _plan(
    job: ClipPrompts, options: GenerationOptions, provider: str, store: str, settings: Settings
) -> JobPlan:
    # An owner/name model's schema (kept with the job), or a catalog model's drift check: before any plan.
    schema = schema_for_run(
        options.model, job.job_id, provider, store, settings, note=get_run_logger().warning
    )
    # store:// images are read through the run's store, opened only if one is not cached on this worker.
    opener = functools.partial(open_store, store, settings)
    with reference_resolver(settings.reference_cache_dir, opener) as resolve:
        return plan_job(job, options, resolve, schema)


def _generate(
    plan: JobPlan, backends: Backends, settings: Settings, run_id: str, run_started: datetime | None
) -> tuple[Clips, Outcome]:
    work = backends.work
    _best_effort("stopping predictions nobody will adopt", lambda: work.sweep_at_start(plan.clips))
    try:
        return _generate_clips(plan, backends, settings)
    finally:
        # Also when the run is interrupted (cancelled, terminated): nothing it paid for keeps running.
        _best_effort("stopping what is left running", lambda: work.settle_at_end(plan.job_id, run_started))


def _generate_clips(plan: JobPlan, backends: Backends, settings: Settings) -> tuple[Clips, Outcome]:
    began = time.monotonic()
    shape = (len(plan.clips), plan.model, plan.aspect_ratio, plan.estimated_cost)
    get_run_logger().info("%d clips on %s at %s, estimate $%.2f", *shape)

    _mirror(plan, announce_start(backends.store, plan))
    tally = events.Tally(total=len(plan.clips))
    clips: list[Clip] = []
    thumbnails: list[PrefectFuture[str]] = []

    # options.concurrency caps predictions in flight (JobWork.in_flight), not clips: a clip downloading,
    # probing or storing its output, or waiting out a retry's backoff, holds no slot. So the runner has a
    # thread more per slot for that work, which bounds it too. Thumbnails get a runner of their own: queued
    # behind clips waiting for a slot they would only come at the end, and they call nothing paid.
    clip_threads = max(1, min(len(plan.clips), CLIP_THREADS_PER_SLOT * plan.concurrency))
    with (
        ThreadPoolTaskRunner[Any](max_workers=clip_threads) as runner,
        ThreadPoolTaskRunner[Any](max_workers=THUMBNAIL_WORKERS) as thumbnail_runner,
        progress_artifact(f"video-clips-{plan.job_id}", "clips finished") as artifact,
    ):
        futures = runner.map(clip_task(settings), {"plan": plan.clips})
        plans = {future.task_run_id: clip_plan for future, clip_plan in zip(futures, plan.clips, strict=True)}
        for future in as_completed(futures):
            clip_plan = plans[future.task_run_id]
            clip = _settle(future, clip_plan, backends)
            clips.append(clip)
            tally.add(clip)
            _best_effort("progress event", functools.partial(_progress, plan, backends.store, clip, tally))
            artifact.show(tally.percent, f"{tally.finished}/{tally.total} clips")  # sent at most 1/s
            if clip.status == "success" and not clip.reused:  # a reused clip has its thumbnail already
                thumbnails.append(thumbnail_runner.submit(generate_thumbnail, {"plan": clip_plan}))
        # Queued futures are dropped silently when the flow returns: wait for them, within a bound.
        _await_thumbnails(thumbnails, settings.thumbnail_wait_seconds)

    result = _with_totals(Clips.collect(plan.job_id, clips, time.monotonic() - began), backends)
    outcome = decide_outcome(result, plan.min_success)
    _report_end(plan, result, outcome, backends.store)
    tidy_work_dir(job_work_dir(settings.work_dir, plan), result)
    return result, outcome


def _report_end(plan: JobPlan, result: Clips, outcome: Outcome, store: ClipStore) -> None:
    """The job's final event, and the Prefect table of its clips; neither may fail the clips."""
    _best_effort("final event", lambda: _mirror(plan, announce_end(store, plan, result, outcome)))
    table = f"video-clips-{plan.job_id}-table"
    _best_effort(
        "clips table",
        lambda: create_table_artifact(clip_table(result), key=table, description=outcome.message),
    )


def _with_totals(result: Clips, backends: Backends) -> Clips:
    """The result with the job's spend and its thumbnail links, as far as the store can tell them now."""
    try:
        spend = backends.work.spend(result.job_id)
        result = result.model_copy(
            update={"spent_this_run": spend.this_run, "spent_all_runs": spend.all_runs}
        )
    except Exception:  # noqa: BLE001 - the clips stand without the job's totals
        get_run_logger().warning("could not read the job's spend; the clips are kept", exc_info=True)
    try:
        result = _with_thumbnails(result, backends.store)
    except Exception:  # noqa: BLE001 - the clips stand without their thumbnail links
        get_run_logger().warning("could not read the thumbnails back; the clips are kept", exc_info=True)
    return result


def _progress(plan: JobPlan, store: ClipStore, clip: Clip, tally: events.Tally) -> None:
    _mirror(plan, announce_progress(store, plan, clip, tally))


def _best_effort(what: str, call: Callable[[], object]) -> None:
    """Reporting must not cost the job its result: a store or API hiccup here is logged, not raised."""
    try:
        call()
    except Exception:  # noqa: BLE001 - see above
        get_run_logger().warning("%s failed; the job goes on", what, exc_info=True)


def _mirror(plan: JobPlan, announced: Announced) -> None:
    """The same progress in Prefect's event feed, with the job as the resource, for the UI and automations."""
    name, data = announced
    emit_event(
        event=f"video-generator.{name}",
        resource={
            "prefect.resource.id": f"video-generator.job.{plan.job_id}",
            "prefect.resource.name": str(plan.job_id),
        },
        payload=data,
    )


def _settle(future: PrefectFuture[Any], plan: ClipPlan, backends: Backends) -> Clip:
    # Read the state only after wait(): right after as_completed it can still say Running
    # (docs/architecture.md, "Prefect facts").
    future.wait()
    outcome = future.result(raise_on_failure=False)
    if isinstance(outcome, Clip):
        return outcome
    error = outcome if isinstance(outcome, BaseException) else None
    return failed_clip(plan, backends.work.clip(plan), error)


def _await_thumbnails(futures: list[PrefectFuture[str]], timeout_s: float) -> None:
    logger = get_run_logger()
    done, pending = wait(futures, timeout=timeout_s)
    if pending:
        logger.warning("%d thumbnails not finished after %.0f s; the clips are kept", len(pending), timeout_s)
    for future in done:
        error = future.result(raise_on_failure=False)
        if isinstance(error, BaseException):
            logger.warning("thumbnail failed (clip kept): %s", error)


def _with_thumbnails(result: Clips, store: ClipStore) -> Clips:
    urls = {record.clip_index: record.thumbnail_url for record in store.thumbnail_records(result.job_id)}
    clips = [clip.model_copy(update={"thumbnail_url": urls.get(clip.clip_index)}) for clip in result.clips]
    return result.model_copy(update={"clips": clips})


if __name__ == "__main__":
    from commands.cli import main

    sys.exit(main(["run", *sys.argv[1:]]))
