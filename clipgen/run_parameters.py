"""The flow's parameters as a Prefect run form shows them, and what they mean on the worker.

The form shows choices (JSON-schema enums become selects) and defaults as values, never a bare None:
- `provider` and `store` offer the built-in backends plus WORKER_DEFAULT, the default, which means the
  worker's own setting (VIDEO_GENERATOR_PROVIDER / VIDEO_GENERATOR_STORE). A worker set up with a registered
  backend or an import path `module:factory` is reached that way; Python callers (the CLI, the queue, tests)
  may also pass such names directly.
- `options` shows GenerationOptions' built-in defaults. What a caller sets is used as set; every option it
  leaves out takes the worker's VIDEO_GENERATOR_* setting (`options_for_run`), as a run without options did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import GetJsonSchemaHandler, WithJsonSchema
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from clipgen.job import GenerationOptions
from clipgen.settings import Settings

WORKER_DEFAULT = "worker-default"
BUILT_IN_PROVIDERS = ("local", "replicate")
BUILT_IN_STORES = ("local", "supabase")


def _choices(names: tuple[str, ...]) -> WithJsonSchema:
    # The schema a form sees. Validation in Python stays `str | None`: registered names, import paths and
    # None (what the queue passes: the worker's setting) pass.
    return WithJsonSchema({"type": "string", "enum": [WORKER_DEFAULT, *names]})


@dataclass(frozen=True)
class _NoNullInSchema:
    """`X | None` validates as before (errors name `options.model`, not a union member), but the schema
    shows only X: a form would otherwise show the parameter as "None" until switched."""

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        others = [branch for branch in schema.get("anyOf", []) if branch.get("type") != "null"]
        if len(others) != 1:
            return schema
        return {**others[0], **{key: value for key, value in schema.items() if key != "anyOf"}}


ProviderName = Annotated[str | None, _choices(BUILT_IN_PROVIDERS)]
StoreName = Annotated[str | None, _choices(BUILT_IN_STORES)]
OptionsParameter = Annotated[GenerationOptions | None, _NoNullInSchema()]
"""None (from Python callers such as the queue) means the same as the default: the worker's settings."""


def backend_name(chosen: str | None, setting: str) -> str:
    """The provider or store a run uses: the caller's choice, or the worker's setting for WORKER_DEFAULT
    (and for None, which Python callers may still pass)."""
    return setting if chosen in (None, "", WORKER_DEFAULT) else str(chosen)


def options_for_run(options: GenerationOptions | None, settings: Settings) -> GenerationOptions:
    """The caller's options over the worker's defaults: an option the caller did not set (not in
    `model_fields_set`) takes the worker's VIDEO_GENERATOR_* setting, or the built-in default."""
    defaults = settings.default_options()
    if options is None:
        return defaults
    chosen = {name: getattr(options, name) for name in options.model_fields_set}
    return GenerationOptions.model_validate(defaults.model_dump(exclude_unset=True) | chosen)
