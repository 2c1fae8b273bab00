"""What the `video-generator` command says when it cannot do its work, and the exit code it returns.

The exit codes (cli.py's docstring and docs/running-jobs.md list them too):

    0  the flow completed (or the job was queued, or the setup was done)
    1  the job ran and failed (too few clips)
    2  the input was refused, before anything was paid for
    3  Prefect is unavailable: nothing answers at PREFECT_API_URL, or the temporary server did not start
    4  Prefect refused a request (a 4xx answer: not a Prefect API, wrong path, or a request it rejects)
    5  the temporary server's database was migrated by a newer Prefect
    6  the clip store is unavailable: unreachable, or it refused the credentials
    130  interrupted (Ctrl-C)
"""

from __future__ import annotations

import textwrap

from clipgen.errors import (
    OperationalError,
    PermanentError,
    PrefectDatabaseTooNew,
    PrefectRefused,
    PrefectUnavailable,
    PublicBucket,
    StoreUnavailable,
)
from clipgen.settings import Settings

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2
EXIT_PREFECT_UNAVAILABLE = 3
EXIT_PREFECT_REFUSED = 4
EXIT_PREFECT_DATABASE = 5
EXIT_STORE_UNAVAILABLE = 6
EXIT_INTERRUPTED = 130

# Most specific first: PrefectDatabaseTooNew is a PrefectUnavailable.
_EXIT_CODES: tuple[tuple[type[OperationalError], int], ...] = (
    (PrefectDatabaseTooNew, EXIT_PREFECT_DATABASE),
    (PrefectUnavailable, EXIT_PREFECT_UNAVAILABLE),
    (PrefectRefused, EXIT_PREFECT_REFUSED),
    (StoreUnavailable, EXIT_STORE_UNAVAILABLE),
)
WIDTH = 100


def exit_code(error: OperationalError) -> int:
    return next((code for kind, code in _EXIT_CODES if isinstance(error, kind)), EXIT_FAILED)


def explain(error: OperationalError, *, verbose: bool) -> str:
    """A short paragraph: what failed, the likely cause, what to do; ready for stderr."""
    how = "" if verbose else "; --verbose shows the traceback"
    parts = [
        f"video-generator: {error.what}",
        f"Likely cause: {error.cause.rstrip('.')}.",
        f"What to do: {error.remedy} (exit code {exit_code(error)}{how})",
    ]
    return "\n".join(_wrapped(part, first=index == 0) for index, part in enumerate(parts))


def interrupted() -> str:
    return _wrapped(
        "video-generator: interrupted. Running the same job again reuses the clips already stored "
        "(exit code 130).",
        first=True,
    )


def store_unavailable(store: str, settings: Settings, error: Exception) -> StoreUnavailable:
    """The store could not be read before the run (its first call): why, for the store it is."""
    if store == "supabase":
        where = f"The Supabase store at {settings.supabase_url}"
        if isinstance(error, PublicBucket):
            return StoreUnavailable(
                f"{where} has a public bucket: {error}",
                cause=f"the bucket {error.bucket} was created or switched to public, so anyone with a "
                "link could read what is in it",
                remedy=f"make {error.bucket} private (Storage, the bucket's settings, or SQL: update "
                f"storage.buckets set public = false where id = '{error.bucket}'); then run the job again.",
            )
        if isinstance(error, PermanentError):  # a 4xx: it answered, and said no
            return StoreUnavailable(
                f"{where} refused the first request: {error}",
                cause="SUPABASE_SERVICE_ROLE_KEY is not this project's service role key, or the tables "
                "are missing",
                remedy="use the service_role key from the project's API settings, and apply "
                "supabase/migrations (`supabase db push`); then run the job again.",
            )
        return StoreUnavailable(
            f"{where} does not answer: {error}",
            cause="the project is down or paused, or SUPABASE_URL names the wrong address",
            remedy="check SUPABASE_URL (https://<project>.supabase.co) and that the project is up, then "
            "run the job again; or use the local store (--store local).",
        )
    if store == "local":
        return StoreUnavailable(
            f"The local store in {settings.data_dir.resolve()} cannot be read: {error}",
            cause="the directory or its database video_generator.db is not readable and writable "
            "(permissions, a full disk, a damaged file)",
            remedy="fix that, or choose another directory with VIDEO_GENERATOR_DATA_DIR.",
        )
    return StoreUnavailable(
        f"The store {store!r} cannot be read: {error}",
        cause="the service behind it does not answer, or refuses this command's credentials",
        remedy="check the store's settings and that its service is up, then run the job again.",
    )


def _wrapped(text: str, *, first: bool) -> str:
    # URLs and paths stay whole: a person copies them.
    return textwrap.fill(
        text,
        WIDTH,
        initial_indent="" if first else "  ",
        subsequent_indent="  ",
        break_long_words=False,
        break_on_hyphens=False,
    )
