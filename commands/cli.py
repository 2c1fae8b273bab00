"""video-generator: turn one job's clip prompts (a JSON file) into video clips, as a Prefect flow.

With no settings it runs on the embedded default: a local preview renderer (nothing is paid for) and a
local store under ./.video-generator, with a temporary Prefect server whose state is kept there too (set
PREFECT_API_URL to use a Prefect server of your own).

    video-generator run JOB.json [--model KEY|OWNER/NAME] [--aspect-ratio R] [--provider local|replicate]
        [--store local|supabase] [--concurrency N] [--min-success N] [--budget USD]
        [--price-per-second USD] [--retry-failed] [--output OUT.json]
    video-generator submit JOB.json [--model KEY|OWNER/NAME] [--aspect-ratio R] [--store local|supabase]
        [--concurrency N] [--min-success N] [--budget USD] [--price-per-second USD] [--max-attempts N]
    video-generator setup-prefect [--work-pool NAME] [--prediction-limit N]
    video-generator serve [--host H] [--port P] [--insecure-no-token]
    video-generator fake-replicate [--host H] [--port P] [--latency S] [--token T] [--schemas DIR]

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
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from clipgen import failures
from clipgen.backends import known_providers, known_stores
from clipgen.catalog import MODELS
from clipgen.errors import OperationalError, ValidationError
from clipgen.failures import EXIT_INVALID
from clipgen.progress_text import indented
from commands import jobs, services


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.command(args))
    except ValidationError as exc:
        print(f"video-generator: refused, nothing was generated:\n{indented(str(exc))}", file=sys.stderr)
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
overrides its variable. More: README.md and docs/, and video-generator COMMAND --help.
"""

VERBOSE_HELP = "show Prefect's own logs, and the traceback of a failure"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="video-generator",
        description=(__doc__ or "").split("\n\n    video-generator run")[0],
        epilog=HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    commands = parser.add_subparsers(required=True, title="commands", metavar="COMMAND")
    for command in (_add_run(commands), _add_submit(commands), _add_setup_prefect(commands)):
        # Also after the command; SUPPRESS keeps a top-level --verbose when this one is not given.
        command.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    _add_serve(commands)
    _add_fake_replicate(commands)
    return parser


def _add_run(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    run = commands.add_parser("run", help="generate the clips of one job (a Prefect flow run)")
    _job_arguments(run)
    run.add_argument("--provider", help=f"{' | '.join(known_providers())} (env VIDEO_GENERATOR_PROVIDER)")
    run.add_argument("--output", type=Path, help="write the Clips JSON here")
    run.set_defaults(command=jobs.run)
    return run


def _add_submit(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    submit = commands.add_parser(
        "submit", help="queue a job for the video-generator-queue deployment (checked first, like run)"
    )
    _job_arguments(submit)
    submit.add_argument(
        "--max-attempts",
        type=int,
        help="runs before it is failed for good (env VIDEO_GENERATOR_QUEUE_MAX_ATTEMPTS, 3)",
    )
    submit.set_defaults(command=jobs.submit)
    return submit


def _add_setup_prefect(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
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
    setup.set_defaults(command=services.setup_prefect)
    return setup


def _add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    server.set_defaults(command=services.serve)


def _add_fake_replicate(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fake = commands.add_parser(
        "fake-replicate",
        help="serve a fake Replicate API for offline staging (then REPLICATE_BASE_URL=http://HOST:PORT)",
    )
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=8787)
    fake.add_argument("--latency", type=float, default=2.0, help="seconds each prediction takes (default 2)")
    fake.add_argument("--token", help="accept only this API token (default: any)")
    fake.add_argument(
        "--schemas",
        type=Path,
        metavar="DIR",
        help="extra model schemas (*.json, the format of clipgen/model_schemas/); one with a built-in "
        "model's name replaces it",
    )
    fake.set_defaults(command=services.fake_replicate)


def _job_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("job", type=Path, metavar="JOB.json")
    command.add_argument(
        "--model",
        metavar="KEY|OWNER/NAME",
        help=f"a catalog model: {' | '.join(MODELS)} (default kling-v2.5-turbo); or any Replicate video "
        "model as owner/name, planned with the input schema Replicate publishes for it (read with "
        "REPLICATE_API_TOKEN, also for a --provider local preview, and kept with the job for reruns)",
    )
    command.add_argument(
        "--aspect-ratio", help="e.g. 16:9, 9:16, 1:1 (default 16:9, or the model's only one)"
    )
    command.add_argument("--store", help=f"{' | '.join(known_stores())} (env VIDEO_GENERATOR_STORE)")
    command.add_argument("--concurrency", type=int, help="clips at once (env VIDEO_GENERATOR_CONCURRENCY, 5)")
    command.add_argument("--min-success", type=int, help="clips needed (env VIDEO_GENERATOR_MIN_CLIPS, 3)")
    command.add_argument(
        "--budget",
        type=float,
        metavar="USD",
        help="refuse the job if its estimate is over this, and pay for nothing past it while it runs",
    )
    command.add_argument(
        "--price-per-second",
        type=float,
        metavar="USD",
        help="what the model costs per second of video, for a model with no published price (an owner/name "
        "model): the estimate and --budget use it",
    )
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


if __name__ == "__main__":
    sys.exit(main())
