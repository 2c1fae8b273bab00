"""The schema a job's model is planned with, and the check that a catalog model has not drifted from its own.

This module owns reading live schemas for a run: a model outside the catalog (`owner/name`) is planned with
the schema kept for its job in the store (so a rerun plans with the same one), else with the schema the
provider reads from Replicate, which is then kept. A catalog model is compared with its live schema at the
start of a paid run: a change that breaks its mapping refuses the job before anything is paid.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable
from uuid import UUID

from clipgen.backends import close_quietly, open_provider, open_store
from clipgen.catalog import MODELS
from clipgen.errors import GenerationError, MediaError, NotFound, ValidationError
from clipgen.model_schema import InputSchema, compare, schema_file_stem
from clipgen.model_spec import ModelSpec
from clipgen.settings import Settings
from clipgen.stores.base import REFERENCE_BUCKET, ClipStore

log = logging.getLogger(__name__)

SCHEMA_FOLDER = "model-schemas"


@runtime_checkable
class SchemaSource(Protocol):
    """Where live schemas come from: the Replicate provider (`GET /v1/models/{owner}/{name}`)."""

    def model_schema(self, model: str) -> InputSchema:
        """The model's latest published input schema. NotFound when Replicate has no such model."""
        ...


def schema_for_run(
    model: str,
    job_id: UUID,
    provider: str,
    store: str,
    settings: Settings,
    note: Callable[[str], None] = log.info,
) -> InputSchema | None:
    """At the start of a run, before planning: the schema of an `owner/name` model (None for a catalog key),
    and for a catalog model run by a provider that reads schemas (Replicate: a paid run), the drift check,
    whose harmless changes go to `note` (the flow passes its run logger). The provider and store are opened
    for this and closed after."""
    opened_provider = open_provider(provider, settings)
    try:
        source = opened_provider if isinstance(opened_provider, SchemaSource) else None
        if model in MODELS:
            # A community model runs a pinned version, whose schema cannot change: only official ones drift.
            if source is not None and MODELS[model].version is None:
                _check_drift_if_readable(MODELS[model], source, note)
            return None
        opened_store = open_store(store, settings)
        try:
            return schema_for_job(model, job_id, opened_store, source)
        finally:
            close_quietly(opened_store)
    finally:
        close_quietly(opened_provider)


def _check_drift_if_readable(spec: ModelSpec, source: SchemaSource, note: Callable[[str], None]) -> None:
    """The drift check, open when the live schema cannot be read (a wrong token, an outage): the creates meet
    the same API, and a create the model would refuse makes nothing (Replicate answers 422), so nothing is
    paid for what the check could not see. A drift it does see refuses the job (ValidationError)."""
    try:
        harmless = check_drift(spec, source)
    except (GenerationError, MediaError) as exc:
        note(f"{spec.key}: its live input schema could not be read, so drift is not checked this run: {exc}")
        return
    except ValueError as exc:
        if isinstance(exc, ValidationError):
            raise
        note(f"{spec.key}: Replicate publishes no readable input schema for it: {exc}")
        return
    if harmless:
        note(f"{spec.key}: its published input schema changed harmlessly: {'; '.join(harmless)}")


def schema_object_path(job_id: UUID, model: str) -> str:
    return f"{SCHEMA_FOLDER}/{job_id}/{schema_file_stem(model)}.json"


def schema_for_job(
    model: str, job_id: UUID, store: ClipStore, source: SchemaSource | None
) -> InputSchema | None:
    """None for a catalog key. For `owner/name`: the schema kept for this job, else the live one (kept now).
    ValidationError naming options.model when there is neither."""
    if model in MODELS:
        return None
    path = schema_object_path(job_id, model)
    if store.has_object(REFERENCE_BUCKET, path):
        return _read_kept(store, path)
    if source is None:
        raise ValidationError.one(
            "options.model",
            f"{model} is not in the catalog and its schema is read from Replicate: use the replicate "
            "provider (REPLICATE_API_TOKEN), or a catalog model",
        )
    try:
        schema = source.model_schema(model)
    except NotFound as exc:
        raise ValidationError.one("options.model", f"Replicate has no model {model}") from exc
    _keep(store, path, schema)
    return schema


def _read_kept(store: ClipStore, path: str) -> InputSchema:
    with tempfile.TemporaryDirectory(prefix="model-schema-") as folder:
        dest = Path(folder) / "schema.json"
        store.read_object(REFERENCE_BUCKET, path, dest)
        return InputSchema.from_file(json.loads(dest.read_text(encoding="utf-8")))


def _keep(store: ClipStore, path: str, schema: InputSchema) -> None:
    with tempfile.TemporaryDirectory(prefix="model-schema-") as folder:
        source = Path(folder) / "schema.json"
        source.write_text(json.dumps(schema.as_json(), sort_keys=True), encoding="utf-8")
        store.put_object(REFERENCE_BUCKET, path, source, "application/json")


def check_drift(spec: ModelSpec, source: SchemaSource) -> tuple[str, ...]:
    """Compare a catalog model's live schema with the one its mapping was built from. Breaking changes
    raise ValidationError naming options.model; the harmless ones are returned."""
    live = source.model_schema(spec.replicate_model)
    sent = {*spec.roles.names(), *spec.fixed}
    changes = compare(spec.schema, live, sent)
    if changes.breaking:
        raise ValidationError.one(
            "options.model",
            f"{spec.replicate_model} changed its published input schema in a way {spec.key} cannot follow: "
            f"{'; '.join(changes.breaking)}. Nothing was paid; choose another model until the catalog is "
            "updated",
        )
    return changes.harmless
