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

from typing import Annotated

from pydantic import WithJsonSchema

from clipgen.job import GenerationOptions
from clipgen.settings import Settings

WORKER_DEFAULT = "worker-default"
BUILT_IN_PROVIDERS = ("local", "replicate")
BUILT_IN_STORES = ("local", "supabase")


def _choices(names: tuple[str, ...]) -> WithJsonSchema:
    # The schema a form sees. Validation in Python stays `str`: registered names and import paths pass.
    return WithJsonSchema({"type": "string", "enum": [WORKER_DEFAULT, *names]})


ProviderName = Annotated[str, _choices(BUILT_IN_PROVIDERS)]
StoreName = Annotated[str, _choices(BUILT_IN_STORES)]


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
    return GenerationOptions.model_validate(defaults.model_dump() | chosen)
