"""`video-generator setup-prefect`, `serve` and `fake-replicate`: set up the Prefect server, serve the
store's jobs, serve the fake Replicate API. Each imports what it starts when it runs, so `--help` loads
none of them."""

from __future__ import annotations

import argparse
import ipaddress
import sys

from clipgen.command_input import load_settings
from clipgen.errors import ValidationError
from clipgen.failures import EXIT_INVALID, EXIT_OK

STAGING_EXTRA_MODULES = frozenset({"python_multipart", "multipart"})
"""What the `staging` extra installs (python-multipart, under either import name)."""

INSTALL_STAGING = (
    "video-generator fake-replicate needs the staging extra: pip install 'video-generator[staging]'"
)


def setup_prefect(args: argparse.Namespace) -> int:
    from clipgen.polling import largest_prediction_limit
    from deployments.prefect_errors import prefect_errors_explained
    from deployments.setup import PrefectSetupError
    from deployments.setup import setup_prefect as set_up

    settings = load_settings()
    if args.prediction_limit < 1:
        raise ValidationError.one("--prediction-limit", "must be at least 1")
    interval = settings.replicate_poll_interval_seconds
    if args.prediction_limit > (largest := largest_prediction_limit(interval)):
        raise ValidationError.one(
            "--prediction-limit",
            f"{args.prediction_limit} predictions polled every {interval:g} s would pass Replicate's 3000 "
            f"requests a minute; the most is {largest}, or set REPLICATE_POLL_INTERVAL to at least "
            f"{args.prediction_limit / largest_prediction_limit(1.0):g}",
        )
    try:
        with prefect_errors_explained(None):
            for line in set_up(args.work_pool, settings.prediction_limit, args.prediction_limit):
                print(line)
    except PrefectSetupError as exc:
        raise ValidationError.one(exc.field, str(exc)) from exc
    return EXIT_OK


def serve(args: argparse.Namespace) -> int:
    from clipgen.server import serve as serve_jobs

    settings = load_settings()  # a bad setting is refused here, with its name
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
    serve_jobs(args.host, args.port)
    return EXIT_OK


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


def fake_replicate(args: argparse.Namespace) -> int:
    try:
        from staging.fake_replicate.schemas import SchemaFileError, read_folder
        from staging.fake_replicate.server import serve as serve_fake
    except ModuleNotFoundError as exc:
        if exc.name not in STAGING_EXTRA_MODULES:
            raise  # a missing module of our own is a bug, not a missing extra
        print(INSTALL_STAGING, file=sys.stderr)
        return EXIT_INVALID
    if args.schemas is not None:
        try:
            read_folder(args.schemas)  # refused before the banner, with the file named
        except SchemaFileError as exc:
            raise ValidationError.one("--schemas", str(exc)) from exc
    print(
        f"fake Replicate API on http://{args.host}:{args.port} (REPLICATE_BASE_URL=http://{args.host}:{args.port})"
    )
    serve_fake(args.host, args.port, token=args.token, latency_s=args.latency, schemas_dir=args.schemas)
    return EXIT_OK
