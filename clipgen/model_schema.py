"""A Replicate model's published input schema: read, checked against locally, compared across versions.

This module owns input schemas: reading one from the API's `openapi_schema` (resolving the `$ref`/`allOf`
enums Replicate writes there) or from our files in clipgen/model_schemas/, validating an input against it
before any paid call, and telling a breaking change from a harmless one (drift).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from clipgen.errors import Problem

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

_URL = re.compile(r"^https?://[^/?#\s]+")
# The keywords an input keeps: what validation and drift read (titles and descriptions are left out).
_KEPT: tuple[str, ...] = ("type", "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_KEPT += ("maxLength", "minLength", "pattern", "format", "items", "default", "nullable")
_KEPT += ("minItems", "maxItems")


@dataclass(frozen=True)
class InputSchema:
    """The inputs of one model version, enums inline. `properties` keep the schema's own keywords."""

    model: str
    version: str | None
    official: bool
    required: tuple[str, ...]
    properties: Mapping[str, Mapping[str, Any]]

    @classmethod
    def from_file(cls, raw: Mapping[str, Any]) -> InputSchema:
        """Our file format (clipgen/model_schemas/*.json): the Input schema with enums inline."""
        return cls(
            model=raw["model"],
            version=raw.get("version"),
            official=raw.get("official", True),
            required=tuple(raw.get("required", ())),
            properties={name: _flat(prop, {}) for name, prop in raw["properties"].items()},
        )

    @classmethod
    def from_model_response(cls, body: Mapping[str, Any]) -> InputSchema:
        """`GET /v1/models/{owner}/{name}`'s answer: the latest version's `openapi_schema`."""
        version = body.get("latest_version") or {}
        openapi = version.get("openapi_schema") or {}
        components = (openapi.get("components") or {}).get("schemas") or {}
        source = components.get("Input")
        if not isinstance(source, Mapping) or not isinstance(source.get("properties"), Mapping):
            raise ValueError(f"{body.get('owner')}/{body.get('name')} publishes no input schema")
        return cls(
            model=f"{body['owner']}/{body['name']}",
            version=version.get("id"),
            official=bool(body.get("is_official", False)),
            required=tuple(source.get("required", ())),
            properties={name: _flat(prop, components) for name, prop in source["properties"].items()},
        )

    def as_json(self) -> dict[str, Any]:
        """The file format, as kept in the store so that a rerun reads the same schema."""
        return {
            "model": self.model,
            "version": self.version,
            "official": self.official,
            "required": list(self.required),
            "properties": {name: dict(prop) for name, prop in self.properties.items()},
        }

    @property
    def digest(self) -> str:
        text = json.dumps({"required": sorted(self.required), "properties": self.properties}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def problems(self, values: Mapping[str, Any]) -> list[Problem]:
        """Everything the model's API would refuse in `values`, each naming `input.<name>`."""
        problems = [
            Problem(f"input.{name}", "is required by the model and nothing in the job fills it")
            for name in self.required
            if values.get(name) is None
        ]
        for name, value in values.items():
            prop = self.properties.get(name)
            if prop is None:
                problems.append(Problem(f"input.{name}", f"{self.model} has no input named {name}"))
            elif value is not None or not prop.get("nullable"):
                problems += [
                    Problem(f"input.{name}", error.message)
                    for error in _validator(json.dumps(prop, sort_keys=True)).iter_errors(value)
                ]
        return problems


def _flat(prop: Mapping[str, Any], components: Mapping[str, Any]) -> dict[str, Any]:
    """One input with `$ref`, `allOf` and `anyOf: [X, null]` resolved, keeping the keywords we check."""
    merged: dict[str, Any] = {}
    for part in prop.get("allOf", ()):
        merged.update(_flat(part, components))
    if "$ref" in prop:
        merged.update(_flat(components.get(prop["$ref"].rsplit("/", 1)[-1], {}), components))
    options = list(prop.get("anyOf", ()))
    if options:
        concrete = [option for option in options if option.get("type") != "null"]
        if len(concrete) == 1:
            merged.update(_flat(concrete[0], components))
        if len(concrete) < len(options):
            merged["nullable"] = True
    merged.update({key: value for key, value in prop.items() if key in _KEPT})
    if isinstance(merged.get("items"), Mapping):
        merged["items"] = _flat(merged["items"], components)
    return merged


@functools.lru_cache(maxsize=512)
def _validator(prop_json: str) -> Validator:
    # Imported on first use: jsonschema takes a sixth of a second to import, and most commands never validate.
    import jsonschema

    checker = jsonschema.FormatChecker(formats=())
    checker.checks("uri")(_is_fetchable)
    schema = {key: value for key, value in json.loads(prop_json).items() if key != "nullable"}
    if isinstance(schema.get("items"), dict):
        schema["items"].pop("nullable", None)
    return jsonschema.Draft202012Validator(schema, format_checker=checker)


def _is_fetchable(value: object) -> bool:
    """What Replicate can fetch: an http(s) URL with a host, or a data: URI."""
    return not isinstance(value, str) or bool(_URL.match(value)) or value.startswith("data:")


@functools.cache
def published_schema(stem: str) -> InputSchema:
    """A schema shipped in clipgen/model_schemas/ (read on first use, not at import)."""
    text = resources.files("clipgen").joinpath("model_schemas", f"{stem}.json").read_text(encoding="utf-8")
    return InputSchema.from_file(json.loads(text))


def schema_file_stem(model: str) -> str:
    return model.replace("/", "__")


# --- drift ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SchemaChanges:
    breaking: tuple[str, ...]
    harmless: tuple[str, ...]


def compare(built_from: InputSchema, live: InputSchema, sent: Iterable[str]) -> SchemaChanges:
    """How `live` differs from the schema a model's mapping was built from. `sent` are the inputs we may
    send: a change to one of them, or a new input the model requires, breaks the mapping."""
    sent = set(sent)
    breaking: list[str] = []
    harmless: list[str] = []
    for name in sorted(set(live.required) - set(built_from.required)):
        if name not in sent and "default" not in live.properties.get(name, {}):
            breaking.append(f"input {name} is now required")
    for name in sorted(set(built_from.properties) | set(live.properties)):
        old, new = built_from.properties.get(name), live.properties.get(name)
        if old is None:
            harmless.append(f"new input {name}")
        elif new is None:
            (breaking if name in sent else harmless).append(f"input {name} was removed")
        elif old != new:
            narrowed = _narrowed(old, new)
            if narrowed and name in sent:
                breaking.append(f"input {name} {narrowed}")
            else:
                harmless.append(f"input {name} changed ({narrowed or 'not narrowed'})")
    return SchemaChanges(tuple(breaking), tuple(harmless))


def _narrowed(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """How `new` accepts less than `old`, in words; empty if it accepts at least as much."""
    if old.get("type") != new.get("type"):
        return f"changed type from {old.get('type')} to {new.get('type')}"
    if "enum" in new:
        dropped = [value for value in old.get("enum", ()) if value not in new["enum"]]
        if dropped or "enum" not in old:
            return "no longer accepts " + ", ".join(json.dumps(value) for value in dropped or ["others"])
    if new.get("minimum", float("-inf")) > old.get("minimum", float("-inf")):
        return f"now has minimum {new['minimum']}"
    if new.get("maximum", float("inf")) < old.get("maximum", float("inf")):
        return f"now has maximum {new['maximum']}"
    if old.get("nullable") and not new.get("nullable"):
        return "no longer accepts null"
    return ""
