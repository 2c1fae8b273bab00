"""`video-generator run` (one flow run here, printing progress as clips finish) and `video-generator submit`
(the job queued for the queue deployment). Both check the job first (clipgen.command_input).

Prefect and the flow are imported inside `run`, after Prefect's settings for this process are set, so that
`--help`, a refused job and `submit` never load Prefect.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import threading
from typing import TYPE_CHECKING, Any
from uuid import UUID

from clipgen import failures
from clipgen.backends import close_quietly, open_provider, open_store
from clipgen.command_input import CheckedJob, check_job, load_settings, open_named_store, upload_images
from clipgen.errors import ConfigurationError, ValidationError, VideoGeneratorError
from clipgen.failures import EXIT_FAILED, EXIT_OK
from clipgen.job import Clips
from clipgen.progress_text import event_line, queued_line, start_line, summary_lines
from clipgen.settings import Settings
from clipgen.stores.base import ClipStore

if TYPE_CHECKING:
    from deployments.temporary_server import TemporaryServer

POLL_S = 0.2


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    provider = args.provider or settings.provider
    store_name = args.store or settings.store
    checked = _checked(settings, args, store_name)
    try:
        # Built once here so a missing credential or unknown name is refused before the flow starts.
        close_quietly(open_provider(provider, settings))
        store = open_store(store_name, settings)
    except ConfigurationError as exc:
        raise ValidationError.one("--provider/--store", str(exc)) from exc
    upload_images(checked.job_file, store, store_name, settings)
    plan = checked.plan
    print(start_line(plan, provider, store_name))
    if settings.server_url:
        print(f"watch it live: {settings.server_url.rstrip('/')}/jobs/{plan.job_id}/view")
    try:
        already = max((event.id for event in store.events(plan.job_id)), default=0)
    except (VideoGeneratorError, OSError, sqlite3.Error) as exc:  # the store's first call
        close_quietly(store)
        raise failures.store_unavailable(store_name, settings, exc) from exc
    return _run_flow(args, settings, checked, provider, store, store_name, already)


def _run_flow(
    args: argparse.Namespace,
    settings: Settings,
    checked: CheckedJob,
    provider: str,
    store: ClipStore,
    store_name: str,
    already: int,
) -> int:
    """The flow run, with the store's new events printed as they come; the summary at the end."""
    server = None
    stop = threading.Event()
    printer = threading.Thread(
        target=_print_progress, args=(store, checked.plan.job_id, already, stop), daemon=True
    )
    try:
        server = _connect_prefect(settings, args.verbose)
        from deployments.prefect_errors import prefect_errors_explained
        from flows.video_generator import generate_video_clips

        printer.start()
        with prefect_errors_explained(server):
            state = generate_video_clips(
                checked.job_file.job, checked.options, provider, store_name, return_state=True
            )
            result = state.result(raise_on_failure=False)
    finally:
        stop.set()
        if printer.is_alive():
            printer.join()
        close_quietly(store)
        if server is not None:
            _send_pending_logs()
            server.stop()

    if not isinstance(result, Clips):
        print(f"failed: {state.message or result}", file=sys.stderr)
        return EXIT_FAILED
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(result.model_dump_json(indent=2))
    price_known = checked.plan.price_known
    for line in summary_lines(result, state.is_completed(), state.message or "", args.output, price_known):
        print(line)
    return EXIT_OK if state.is_completed() else EXIT_FAILED


def _connect_prefect(settings: Settings, verbose: bool) -> TemporaryServer | None:
    """Prefect's settings for this process, before the flow is imported; the temporary server started
    (state under the data directory) when no Prefect server is configured."""
    # A command-line tool sends no usage data unless asked to.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if not verbose:
        # Prefect's INFO logs would drown the progress lines.
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from deployments.temporary_server import start, temporary_server

    server = temporary_server(settings.data_dir)
    if server is not None:
        print(
            f"starting a temporary Prefect server (state in {server.home}; "
            "set PREFECT_API_URL to use a server of your own) ...",
            flush=True,
        )
        start(server)
    return server


def _send_pending_logs() -> None:
    # The run's last logs go to the server from a background worker: send them before the temporary server
    # stops, or Prefect prints "Error logging to API" on the way out (seen on quick reruns).
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=5)


def _print_progress(store: ClipStore, job_id: UUID, after: int, stop: threading.Event) -> None:
    while True:
        finished = stop.is_set()
        for event in store.events(job_id, after=after):
            after = event.id
            line = event_line(event.event, event.data)
            if line:
                print(line, flush=True)
        if finished:
            return
        stop.wait(POLL_S)


def submit(args: argparse.Namespace) -> int:
    from clipgen.errors import JobBusy
    from clipgen.queueing import queue_of

    settings = load_settings()
    max_attempts = args.max_attempts if args.max_attempts is not None else settings.queue_max_attempts
    if max_attempts < 1:
        raise ValidationError.one("--max-attempts", "must be at least 1")
    store_name = args.store or settings.store
    checked = _checked(settings, args, store_name)
    job, plan = checked.job_file.job, checked.plan
    store = open_named_store(store_name, settings, "--store")
    try:
        queue = queue_of(store, store_name)
        upload_images(checked.job_file, store, store_name, settings)
        queued = queue.enqueue_job(
            job.job_id, job.model_dump(mode="json"), checked.options.model_dump(mode="json"), max_attempts
        )
    except JobBusy as exc:
        print(f"video-generator: not queued: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        close_quietly(store)
    print(queued_line(plan, store_name, queued.max_attempts))
    return EXIT_OK


def _checked(settings: Settings, args: argparse.Namespace, store_name: str) -> CheckedJob:
    return check_job(settings, args.job, _option_flags(args), store_name, args.allow_any_file)


def _option_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "model": args.model,
        "aspect_ratio": args.aspect_ratio,
        "concurrency": args.concurrency,
        "min_success": args.min_success,
        "retry_failed": args.retry_failed,
        "budget_usd": args.budget,
        "price_per_second_usd": args.price_per_second,
    }
