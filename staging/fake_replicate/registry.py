"""The models one fake serves: the built-in schemas, a folder's over them (same `model` replaces a built-in
one, which is how a test serves a drifted schema), and any added at run time (`POST /_fake/schemas`)."""

from __future__ import annotations

import threading
from pathlib import Path

from staging.fake_replicate.schemas import ModelSchema, all_schemas, find_version, read_folder


class SchemaBook:
    def __init__(self, folder: Path | None = None) -> None:
        extra = read_folder(folder) if folder is not None else ()
        self._initial = {schema.model: schema for schema in (*all_schemas(), *extra)}
        self._lock = threading.Lock()
        self._models = dict(self._initial)

    def add(self, schema: ModelSchema) -> bool:
        """Serve `schema` from now on; True if it replaced a model of the same name."""
        with self._lock:
            replaced = schema.model in self._models
            self._models[schema.model] = schema
            return replaced

    def restore(self) -> None:
        """Back to the schemas the fake started with (built-ins and the folder's)."""
        with self._lock:
            self._models = dict(self._initial)

    def all(self) -> list[ModelSchema]:
        with self._lock:
            return list(self._models.values())

    def by_model(self, model: str) -> ModelSchema | None:
        with self._lock:
            return self._models.get(model)

    def by_version(self, reference: str) -> ModelSchema | None:
        """A `version` as POST /v1/predictions takes it (see `schemas.find_version`)."""
        return find_version(self.all(), reference)
