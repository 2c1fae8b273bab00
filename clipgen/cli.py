"""video-generator: turn one job's clip prompts (a JSON file) into video clips, as a Prefect flow.

With no settings it runs on the embedded default: a local preview renderer (nothing is paid for) and a
local store under ./.video-generator, with a temporary Prefect server whose state is kept there too (set
PREFECT_API_URL to use a Prefect server of your own).

    video-generator run JOB.json [--model KEY] [--aspect-ratio R] [--provider local|replicate]
        [--store local|supabase] [--concurrency N] [--min-success N] [--retry-failed] [--output OUT.json]
    video-generator submit JOB.json [--model KEY] [--aspect-ratio R] [--store local|supabase]
        [--concurrency N] [--min-success N] [--max-attempts N]
    video-generator setup-prefect [--work-pool NAME] [--prediction-limit N]
    video-generator serve [--host H] [--port P] [--insecure-no-token]
    video-generator fake-replicate [--host H] [--port P] [--latency S] [--token T]

    video-generator [--verbose] COMMAND ...   # --verbose: Prefect's logs, and the traceback of a failure

Exit codes: 0 the flow completed (or the job was queued, or the setup was done); 1 the job failed; 2 the
input was refused (before any paid call); 3 Prefect is unavailable (nothing answers at PREFECT_API_URL, or
the temporary server did not start); 4 Prefect refused a request (a 4xx: not a Prefect API, or a request
it rejects); 5 the temporary server's database was migrated by a newer Prefect; 6 the store is unavailable
(unreachable, or it refused the credentials); 130 interrupted. Every failure but 1 ends with a paragraph on
stderr: what failed, the likely cause, what to do (clipgen/failures.py).
"""

from __future__ import annotations

import argparse
import functools
import os
import sqlite3
import sys
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydantic

from clipgen import events, failures
from clipgen.backends import close_quietly, known_providers, known_stores, open_provider, open_store
from clipgen.catalog import MODELS
from clipgen.errors import OperationalError, ValidationError, VideoGeneratorError
from clipgen.failures import EXIT_FAILED, EXIT_INVALID, EXIT_OK
from clipgen.job import Clips, GenerationOptions
from clipgen.job_files import JobFile, read_job
from clipgen.planning import JobPlan, plan_job, pydantic_problems
from clipgen.references import reference_resolver
from clipgen.settings import Settings
from clipgen.stores.base import ClipStore

if TYPE_CHECKING:
    from deployments.temporary_server import TemporaryServer

POLL_S = 0.2


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.command(args))
    except ValidationError as exc:
        print(f"video-generator: refused, nothing was generated:\n{_indent(str(exc))}", file=sys.stderr)
        return EXIT_INVALID
    except OperationalError as exc:
        if args.verbose:
            traceback.print_exc()
        print(failures.explain(exc, verbose=args.verbose), file=sys.stderr)
        return failures.exit_code(exc)
    except KeyboardInterrupt:
        if args.verbose:
            traceback.print_exc()
        print(failures.interrupted(), file=sys.stderr)
        return failures.EXIT_INTERRUPTED


HELP_EPILOG = """\
exit codes:
  0    the flow completed (or the job was queued, or the setup was done)
  1    the job failed (too few clips; the summary says why)
  2    the input was refused, before anything was paid for
  3    Prefect is unavailable: nothing answers at PREFECT_API_URL, or the temporary server did not start
  4    Prefect refused a request (a 4xx: not a Prefect API, or a request it rejects)
  5    the temporary Prefect server's database was migrated by a newer Prefect
  6    the store is unavailable (unreachable, or it refused the credentials)
  130  interrupted
Each failure ends with what failed, the likely cause and what to do; --verbose adds the traceback.

Settings are environment variables (VIDEO_GENERATOR_*, REPLICATE_*, SUPABASE_*, PREFECT_API_URL); a flag
overrides its variable. More: README.md, and video-generator COMMAND --help.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="video-generator",
        description=__doc__.split("\n\n    video-generator run")[0],
        epilog=HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    commands = parser.add_subparsers(required=True, title="commands", metavar="COMMAND")

    run = commands.add_parser("run", help="generate the clips of one job (a Prefect flow run)")
    _job_arguments(run)
    run.add_argument("--provider", help=f"{' | '.join(known_providers())} (env VIDEO_GENERATOR_PROVIDER)")
    run.add_argument("--output", type=Path, help="write the Clips JSON here")
    run.set_defaults(command=_run)

    submit = commands.add_parser(
        "submit", help="queue a job for the video-generator-queue deployment (checked first, like run)"
    )
    _job_arguments(submit)
    submit.add_argument(
        "--max-attempts",
        type=int,
        help="runs before it is failed for good (env VIDEO_GENERATOR_QUEUE_MAX_ATTEMPTS, 3)",
    )
    submit.set_defaults(command=_submit)

    setup = commands.add_parser(
        "setup-prefect",
        help="create the work pool and the global prediction limit on the Prefect server at PREFECT_API_URL",
    )
    setup.add_argument(
        "--work-pool", default="video-generator", help="process work pool (default video-generator)"
    )
    setup.add_argument(
        "--prediction-limit",
        type=int,
        default=10,
        help="paid predictions in flight at once across every run and worker (default 10)",
    )
    setup.set_defaults(command=_setup_prefect)

    server = commands.add_parser(
        "serve", help="serve progress (SSE), job status and job pages over the store"
    )
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=int, default=8000)
    server.add_argument(
        "--insecure-no-token",
        action="store_true",
        help="serve on a non-loopback address without VIDEO_GENERATOR_API_TOKEN: anyone who reaches it "
        "can read every job",
    )
    server.set_defaults(command=_serve)

    fake = commands.add_parser(
        "fake-replicate",
        help="serve a fake Replicate API for offline staging (then REPLICATE_BASE_URL=http://HOST:PORT)",
    )
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=8787)
    fake.add_argument("--latency", type=float, default=2.0, help="seconds each prediction takes (default 2)")
    fake.add_argument("--token", help="accept only this API token (default: any)")
    fake.set_defaults(command=_fake_replicate)
    for command in (run, submit, setup):
        # Also after the command; SUPPRESS keeps a top-level --verbose when this one is not given.
        command.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return parser


VERBOSE_HELP = "show Prefect's own logs, and the traceback of a failure"


def _job_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("job", type=Path, metavar="JOB.json")
    command.add_argument("--model", help=f"{' | '.join(MODELS)} (default kling-v2.5-turbo)")
    command.add_argument(
        "--aspect-ratio", help="e.g. 16:9, 9:16, 1:1 (default 16:9, or the model's only one)"
    )
    command.add_argument("--store", help=f"{' | '.join(known_stores())} (env VIDEO_GENERATOR_STORE)")
    command.add_argument("--concurrency", type=int, help="clips at once (env VIDEO_GENERATOR_CONCURRENCY, 5)")
    command.add_argument("--min-success", type=int, help="clips needed (env VIDEO_GENERATOR_MIN_CLIPS, 3)")
    command.add_argument(
        "--allow-any-file",
        action="store_true",
        help="read image files the job names anywhere on disk (by default: JOB.json's folder and below)",
    )
    command.add_argument(
        "--retry-failed",
        action="store_true",
        default=None,
        help="pay again for clips that failed for good in an earlier run of the same plan",
    )


def _checked_job(
    settings: Settings, args: argparse.Namespace, store_name: str
) -> tuple[JobFile, GenerationOptions, JobPlan]:
    """The job and options from the command line, planned: every refusal happens here, before any call.

    The job's image files are staged (cached here, named by store:// reference), not uploaded yet: the
    caller uploads them (`JobFile.upload`) once the job is accepted. The store is opened only if the job
    itself names a store:// image that is not cached.
    """
    job_file = read_job(args.job, settings.reference_cache_dir, args.allow_any_file)
    options = _options(settings, args)
    opener = functools.partial(_open_store, store_name, settings, "--store")
    with reference_resolver(settings.reference_cache_dir, opener) as resolve:
        plan = plan_job(job_file.job, options, resolve)
    return job_file, options, plan


def _open_store(name: str, settings: Settings, flag: str) -> ClipStore:
    """The store named `name`; a refusal naming `flag` for an unknown name or missing credentials."""
    try:
        return open_store(name, settings)
    except (ValueError, ImportError, AttributeError) as exc:
        raise ValidationError.one(flag, str(exc)) from exc


def _upload_images(job_file: JobFile, store: ClipStore, store_name: str, settings: Settings) -> None:
    """Put the job's images into the store before the job is sent. Often the store's first call, so a store
    that does not answer or refuses the key fails here, said as the store's own first call would be."""
    try:
        job_file.upload(store)
    except (VideoGeneratorError, OSError) as exc:
        close_quietly(store)
        raise failures.store_unavailable(store_name, settings, exc) from exc


def _run(args: argparse.Namespace) -> int:
    settings = _settings()
    provider = args.provider or settings.provider
    store_name = args.store or settings.store
    job_file, options, plan = _checked_job(settings, args, store_name)
    job = job_file.job
    try:
        # Built once here so a missing credential or unknown name is refused before the flow starts.
        close_quietly(open_provider(provider, settings))
        store = open_store(store_name, settings)
    except (ValueError, ImportError, AttributeError) as exc:
        raise ValidationError.one("--provider/--store", str(exc)) from exc
    _upload_images(job_file, store, store_name, settings)

    price = "free local preview" if provider == "local" else "estimate"
    print(
        f"job {plan.job_id}: {len(plan.clips)} clips · {plan.model} {plan.aspect_ratio} · "
        f"provider {provider} · store {store_name} · {price} (on Replicate ${plan.estimated_cost:.2f})"
    )
    if settings.server_url:
        print(f"watch it live: {settings.server_url.rstrip('/')}/jobs/{plan.job_id}/view")
    try:
        already = max((event.id for event in store.events(plan.job_id)), default=0)
    except (VideoGeneratorError, OSError, sqlite3.Error) as exc:  # the store's first call
        close_quietly(store)
        raise failures.store_unavailable(store_name, settings, exc) from exc
    server = None
    stop = threading.Event()
    printer = threading.Thread(target=_print_progress, args=(store, plan, already, stop), daemon=True)
    try:
        server = _connect_prefect(settings, args.verbose)
        from deployments.prefect_errors import prefect_errors_explained
        from flows.video_generator import generate_video_clips

        printer.start()
        with prefect_errors_explained(server):
            state = generate_video_clips(job, options, provider, store_name, return_state=True)
            result = state.result(raise_on_failure=False)
    finally:
        stop.set()
        if printer.is_alive():
            printer.join()
        close_quietly(store)
        if server is not None:
            server.stop()

    if not isinstance(result, Clips):
        print(f"failed: {state.message or result}", file=sys.stderr)
        return EXIT_FAILED
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(result.model_dump_json(indent=2))
    _print_summary(result, state.is_completed(), state.message or "", args.output)
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


def _submit(args: argparse.Namespace) -> int:
    from clipgen.queueing import queue_of
    from clipgen.stores.queue import JobBusy

    settings = _settings()
    max_attempts = args.max_attempts if args.max_attempts is not None else settings.queue_max_attempts
    if max_attempts < 1:
        raise ValidationError.one("--max-attempts", "must be at least 1")
    store_name = args.store or settings.store
    job_file, options, plan = _checked_job(settings, args, store_name)
    job = job_file.job
    store = _open_store(store_name, settings, "--store")
    try:
        queue = queue_of(store, store_name)
        _upload_images(job_file, store, store_name, settings)
        queued = queue.enqueue_job(
            job.job_id, job.model_dump(mode="json"), options.model_dump(mode="json"), max_attempts
        )
    except JobBusy as exc:
        print(f"video-generator: not queued: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        close_quietly(store)
    print(
        f"queued job {queued.job_id}: {len(plan.clips)} clips · {plan.model} {plan.aspect_ratio} · "
        f"store {store_name} · up to {queued.max_attempts} runs · "
        f"estimate on Replicate ${plan.estimated_cost:.2f}"
    )
    return EXIT_OK


def _setup_prefect(args: argparse.Namespace) -> int:
    from deployments.setup import PrefectSetupError, setup_prefect

    settings = _settings()
    if args.prediction_limit < 1:
        raise ValidationError.one("--prediction-limit", "must be at least 1")
    from deployments.prefect_errors import prefect_errors_explained

    try:
        with prefect_errors_explained(None):
            for line in setup_prefect(args.work_pool, settings.prediction_limit, args.prediction_limit):
                print(line)
    except PrefectSetupError as exc:
        raise ValidationError.one(exc.field, str(exc)) from exc
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    from clipgen.server import serve

    settings = _settings()  # a bad setting is refused here, with its name
    token = settings.api_token
    if token is not None and not token.get_secret_value():
        raise ValidationError.one(
            "VIDEO_GENERATOR_API_TOKEN", "is empty: set a token, or unset it to serve without one"
        )
    if token is None and not _is_loopback_host(args.host):
        if not args.insecure_no_token:
            raise ValidationError.one(
                "--host",
                f"{args.host} is reachable from other machines: set VIDEO_GENERATOR_API_TOKEN, or pass "
                "--insecure-no-token to serve every job to anyone who can connect",
            )
        print(
            f"warning: serving on {args.host} without VIDEO_GENERATOR_API_TOKEN (--insecure-no-token): "
            "anyone who can connect can read every job",
            file=sys.stderr,
        )
    serve(args.host, args.port)
    return EXIT_OK


def _is_loopback_host(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


def _fake_replicate(args: argparse.Namespace) -> int:
    from staging.fake_replicate.server import serve

    print(
        f"fake Replicate API on http://{args.host}:{args.port} (REPLICATE_BASE_URL=http://{args.host}:{args.port})"
    )
    serve(args.host, args.port, token=args.token, latency_s=args.latency)
    return EXIT_OK


def _settings() -> Settings:
    try:
        return Settings()
    except pydantic.ValidationError as exc:
        raise ValidationError(pydantic_problems(exc)) from exc


def _options(settings: Settings, args: argparse.Namespace) -> GenerationOptions:
    flags = {
        "model": args.model,
        "aspect_ratio": args.aspect_ratio,
        "concurrency": args.concurrency,
        "min_success": args.min_success,
        "retry_failed": args.retry_failed,
    }
    try:
        base = settings.default_options().model_dump(exclude_unset=True)
        return GenerationOptions.model_validate(base | {k: v for k, v in flags.items() if v is not None})
    except pydantic.ValidationError as exc:
        raise ValidationError(pydantic_problems(exc, prefix="options")) from exc


def _print_progress(store: ClipStore, plan: JobPlan, after: int, stop: threading.Event) -> None:
    while True:
        finished = stop.is_set()
        for event in store.events(plan.job_id, after=after):
            after = event.id
            line = _describe(event.event, event.data)
            if line:
                print(line, flush=True)
        if finished:
            return
        stop.wait(POLL_S)


def _describe(name: str, data: dict[str, Any]) -> str | None:
    if name == events.PROGRESS:
        done = f"[{data['completed'] + data['failed']}/{data['total']}] clip {data['clip_index']}"
        if data["status"] != "success":
            return f"  {done} FAILED: {data.get('error')}"
        if data.get("reused"):
            return f"  {done} reused: {data['actual_duration']:.2f} s, stored by an earlier run"
        cost = data.get("cost") or 0.0
        return f"  {done} ok: {data['actual_duration']:.2f} s" + (f" · ${cost:.2f}" if cost else "")
    if name == events.RETRY:
        return (
            f"  clip {data['clip_index']}: attempt {data['attempt']} failed ({data['error']}); "
            f"retrying in ~{data['delay_seconds']:.0f} s"
        )
    return None


def _print_summary(result: Clips, completed: bool, message: str, output: Path | None) -> None:
    reused = sum(clip.reused for clip in result.clips)
    made = sum(clip.status == "success" and not clip.reused for clip in result.clips)
    if reused and not made:
        message += " · all reused from earlier runs, none generated now"
    elif reused:
        message += f" · {reused} reused from earlier runs"
    print(f"{'Completed' if completed else 'Failed'}: {message}")
    for clip in result.clips:
        if clip.status == "success":
            seconds = f"{clip.actual_duration:.2f} s (target {clip.original_target_duration:g} s)"
            shape = f"{clip.width}x{clip.height}"
            note = "  (reused)" if clip.reused else ""
            print(f"  clip {clip.clip_index}: {seconds} {shape} ${clip.cost:.2f}  {clip.video_url}{note}")
        else:
            print(f"  clip {clip.clip_index}: failed after {clip.retry_count + 1} attempt(s): {clip.error}")
    print(
        f"  this run: {made} generated, {reused} reused, paid ${result.spent_this_run:.2f} · all runs paid "
        f"${result.spent_all_runs:.2f} · the clips cost ${result.total_cost:.2f} · "
        f"{result.total_generation_time:.1f} s"
    )
    if output:
        print(f"  result written to {output}")


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())


if __name__ == "__main__":
    sys.exit(main())
