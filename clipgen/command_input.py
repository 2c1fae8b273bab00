"""What a `video-generator` command is given, checked before anything runs: the settings, the options its
flags set, the job file read and planned, the store it names.

The owner of the command line's refusals: each is a ValidationError naming the setting, flag or field, raised
here before any flow starts or anything is paid for. The commands themselves (commands/) parse arguments and
start flows; this module needs no Prefect.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pydantic

from clipgen import failures
from clipgen.backends import close_quietly, open_provider, open_store
from clipgen.catalog import MODELS
from clipgen.errors import (
    ConfigurationError,
    GenerationError,
    StoreError,
    ValidationError,
    VideoGeneratorError,
)
from clipgen.job import GenerationOptions
from clipgen.job_files import JobFile, read_job
from clipgen.model_lookup import SchemaSource, schema_for_job, schema_object_path
from clipgen.model_schema import InputSchema
from clipgen.planning import JobPlan, plan_job, pydantic_problems
from clipgen.references import reference_resolver
from clipgen.settings import Settings
from clipgen.stores.base import REFERENCE_BUCKET, ClipStore


@dataclass(frozen=True)
class CheckedJob:
    """A job file read and planned: what `run` and `submit` go on with."""

    job_file: JobFile
    options: GenerationOptions
    plan: JobPlan


def load_settings() -> Settings:
    """The settings from the environment; a bad one is refused with its name."""
    try:
        return Settings()
    except pydantic.ValidationError as exc:
        raise ValidationError(pydantic_problems(exc)) from exc


def options_from_flags(settings: Settings, flags: Mapping[str, Any]) -> GenerationOptions:
    """The settings' options with every flag that was given (not None) on top."""
    try:
        base = settings.default_options().model_dump(exclude_unset=True)
        given = {name: value for name, value in flags.items() if value is not None}
        return GenerationOptions.model_validate(base | given)
    except pydantic.ValidationError as exc:
        raise ValidationError(pydantic_problems(exc, prefix="options")) from exc


def check_job(
    settings: Settings, path: Path, flags: Mapping[str, Any], store_name: str, allow_any_file: bool
) -> CheckedJob:
    """The job in `path`, planned with the options `flags` set: every refusal happens here, before any call.
    A bad job file is reported before bad flags.

    The job's image files are staged (cached here, named by store:// reference), not uploaded yet: the
    caller uploads them (`upload_images`) once the job is accepted. The store is opened only if the job
    itself names a store:// image that is not cached, or an `owner/name` model (its schema is kept there).
    """
    job_file = read_job(path, settings.reference_cache_dir, allow_any_file)
    options = options_from_flags(settings, flags)
    opener = functools.partial(open_named_store, store_name, settings, "--store")
    schema = schema_for_command(options.model, job_file.job.job_id, settings, opener)
    with reference_resolver(settings.reference_cache_dir, opener) as resolve:
        plan = plan_job(job_file.job, options, resolve, schema)
    return CheckedJob(job_file, options, plan)


def schema_for_command(
    model: str, job_id: UUID, settings: Settings, opener: Callable[[], ClipStore]
) -> InputSchema | None:
    """The schema an `owner/name` model is planned with, whatever the provider: the one kept with the job in
    the store, else the one Replicate publishes (read with REPLICATE_API_TOKEN, also for a free local
    preview), kept now so the flow and every rerun plan with the same. None for any other name: a catalog
    key, or a name the plan refuses."""
    if model in MODELS or "/" not in model:
        return None
    store = opener()
    try:
        source = _schema_source(settings)
        try:
            if source is None and not store.has_object(REFERENCE_BUCKET, schema_object_path(job_id, model)):
                raise ValidationError.one(
                    "options.model",
                    f"{model} is not in the catalog, so it is planned with the input schema Replicate "
                    "publishes for it, also for a local preview: set REPLICATE_API_TOKEN (and "
                    "REPLICATE_BASE_URL for another API), or choose a catalog model",
                )
            return schema_for_job(model, job_id, store, source)
        except StoreError:
            raise  # the store's own failure (some are also GenerationErrors), not Replicate's
        except GenerationError as exc:  # Replicate refused the token, or did not answer
            raise ValidationError.one(
                "options.model", f"{model}'s input schema could not be read from Replicate: {exc}"
            ) from exc
        finally:
            close_quietly(source)
    finally:
        close_quietly(store)


def _schema_source(settings: Settings) -> SchemaSource | None:
    """The Replicate provider, which reads published schemas, when its token is set."""
    if settings.replicate_api_token is None:
        return None
    provider = open_provider("replicate", settings)
    if isinstance(provider, SchemaSource):
        return provider
    close_quietly(provider)
    return None


def open_named_store(name: str, settings: Settings, flag: str) -> ClipStore:
    """The store named `name`; a refusal naming `flag` for an unknown name or missing credentials."""
    try:
        return open_store(name, settings)
    except ConfigurationError as exc:
        raise ValidationError.one(flag, str(exc)) from exc


def upload_images(job_file: JobFile, store: ClipStore, store_name: str, settings: Settings) -> None:
    """Put the job's images into the store before the job is sent. Often the store's first call, so a store
    that does not answer or refuses the key fails here, said as the store's own first call would be."""
    try:
        job_file.upload(store)
    except (VideoGeneratorError, OSError) as exc:
        close_quietly(store)
        raise failures.store_unavailable(store_name, settings, exc) from exc
