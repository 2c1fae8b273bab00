"""The models the fake knows, from their published input schemas: the product's own files
(`clipgen/model_schemas/`), a folder of extra ones over them, or one posted at run time.

The file format is Replicate's input schema with enums written inline, plus `model`, `version` (null: a
stable made-up one) and `output`; the fake also reads an optional `is_official` (default: every model but
the community ones below) and `description`. Instead of the inline schema, a file may carry a version's
`openapi_schema` as the API serves it (enums behind `$ref`s). Other keys (notes, sources, pricing...) are
ignored.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

# Community models run a pinned version through POST /v1/predictions; the model's predictions endpoint only
# serves official models and answers 404 for these, as Replicate does.
COMMUNITY_MODELS = frozenset(
    {"stability-ai/stable-video-diffusion", "cuuupid/cogvideox-5b", "thudm/cogvideox-i2v"}
)
_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_VERSION = re.compile(r"^[0-9a-f]{64}$")
# uri inputs that are not images: the fake does not fetch these (wan's `audio`, seedance's references).
_NOT_IMAGE = re.compile(r"audio|video")


class SchemaFileError(ValueError):
    """A schema in the file format that the fake cannot serve (the message names what is wrong)."""


@dataclass(frozen=True)
class ModelSchema:
    model: str
    version: str
    required: tuple[str, ...]
    properties: dict[str, dict[str, Any]]
    official: bool = True
    output: Mapping[str, Any] | None = None
    description: str | None = None

    def with_defaults(self, values: dict[str, Any]) -> dict[str, Any]:
        """The input as the model sees it: schema defaults filled in where a field was not sent."""
        filled = {name: prop["default"] for name, prop in self.properties.items() if "default" in prop}
        filled.update(values)
        return filled

    def image_fields(self) -> tuple[str, ...]:
        """The inputs that take an image: a uri, or an array of uris, unless the name says audio/video."""
        return tuple(
            name for name, prop in self.properties.items() if _is_uri(prop) and not _NOT_IMAGE.search(name)
        )

    def first_frame_fields(self) -> tuple[str, ...]:
        """Single image inputs that are not the last frame, in schema order: the first one sent is the
        image a model animates (`image`, `start_image`, `first_frame_image`, `input_reference`...)."""
        return tuple(
            name
            for name in self.image_fields()
            if self.properties[name].get("type") != "array" and not re.search(r"last|end", name)
        )


def _is_uri(prop: dict[str, Any]) -> bool:
    items = prop.get("items")
    if prop.get("type") == "array" and isinstance(items, dict):
        return _is_uri(items)
    return prop.get("type") == "string" and prop.get("format") == "uri"


def read_schema(raw: object, origin: str = "schema") -> ModelSchema:
    """A schema in the file format, checked enough that serving it and validating with it cannot fail."""
    if not isinstance(raw, dict):
        raise SchemaFileError(f"{origin}: not a JSON object")
    if "openapi_schema" in raw:
        raw = {**raw, **_inline_enums(raw["openapi_schema"], origin)}
    model, version = raw.get("model"), raw.get("version")
    if not isinstance(model, str) or not _MODEL.match(model):
        raise SchemaFileError(f"{origin}: `model` must be owner/name, not {model!r}")
    if version is not None and not (isinstance(version, str) and _VERSION.match(version)):
        raise SchemaFileError(f"{origin}: `version` must be 64 lowercase hex digits or null")
    properties, required = raw.get("properties"), raw.get("required", [])
    if not isinstance(properties, dict) or not all(isinstance(p, dict) for p in properties.values()):
        raise SchemaFileError(f"{origin}: `properties` must map each input to its schema")
    if not isinstance(required, list) or not set(required) <= set(properties):
        raise SchemaFileError(f"{origin}: `required` must list inputs named in `properties`")
    try:
        jsonschema.Draft4Validator.check_schema({"type": "object", "properties": properties})
    except jsonschema.SchemaError as exc:
        raise SchemaFileError(f"{origin}: input {'.'.join(map(str, exc.path))}: {exc.message}") from exc
    official = raw.get("is_official", model not in COMMUNITY_MODELS)
    description = raw.get("description")
    return ModelSchema(
        model=model,
        version=version or fake_version(model),
        required=tuple(required),
        properties=properties,
        official=bool(official),
        output=raw.get("output") or {"type": "string", "format": "uri", "title": "Output"},
        description=description if isinstance(description, str) else None,
    )


def _inline_enums(document: object, origin: str) -> dict[str, Any]:
    """`required`, `properties` and `output` of a version's openapi_schema, as GET /v1/models serves it,
    with each `allOf: [{"$ref": "#/components/schemas/<name>"}]` replaced by the component's enum and type."""
    try:
        components = document["components"]["schemas"]  # type: ignore[index]
        inputs = components["Input"]
        properties = {name: dict(prop) for name, prop in inputs["properties"].items()}
        for prop in properties.values():
            for part in prop.pop("allOf", []):
                target = components[part["$ref"].removeprefix("#/components/schemas/")]
                prop.update({key: target[key] for key in ("enum", "type") if key in target})
    except (KeyError, TypeError, AttributeError) as exc:
        raise SchemaFileError(f"{origin}: openapi_schema without a readable Input ({exc!r})") from exc
    return {
        "required": inputs.get("required", []),
        "properties": properties,
        "output": components.get("Output"),
    }


def read_folder(folder: Path) -> tuple[ModelSchema, ...]:
    """Every `*.json` schema file of a folder, by file name."""
    if not folder.is_dir():
        raise SchemaFileError(f"{folder}: not a folder")
    return tuple(
        _read_file(path.name, path.read_text(encoding="utf-8")) for path in sorted(folder.glob("*.json"))
    )


def _read_file(name: str, text: str) -> ModelSchema:
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise SchemaFileError(f"{name}: not JSON ({exc})") from exc
    return read_schema(raw, name)


@functools.cache
def all_schemas() -> tuple[ModelSchema, ...]:
    """The built-in schemas, read once on first use (nothing is loaded at import)."""
    folder = resources.files("clipgen").joinpath("model_schemas")
    entries = sorted(
        (entry for entry in folder.iterdir() if entry.name.endswith(".json")), key=lambda e: e.name
    )
    return tuple(_read_file(entry.name, entry.read_text(encoding="utf-8")) for entry in entries)


def fake_version(model: str) -> str:
    """A stable made-up version id, for a model whose real one is not known."""
    return hashlib.sha256(f"fake-replicate:{model}".encode()).hexdigest()


def by_model(model: str) -> ModelSchema | None:
    """A built-in schema by model name."""
    return next((schema for schema in all_schemas() if schema.model == model), None)


def find_version(schemas: Iterable[ModelSchema], reference: str) -> ModelSchema | None:
    """A `version` as POST /v1/predictions takes it: `<64 hex>`, `owner/name:<64 hex>`, or `owner/name`
    (official models only)."""
    held = list(schemas)
    model, _, version = reference.rpartition(":") if ":" in reference else ("", "", reference)
    if not model and "/" in version:
        schema = next((schema for schema in held if schema.model == version), None)
        return schema if schema is not None and schema.official else None
    if not _VERSION.match(version):
        return None
    schema = next((schema for schema in held if schema.version == version), None)
    if schema is None or (model and schema.model != model):
        return None
    return schema
