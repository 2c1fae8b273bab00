"""A model as GET /v1/models/{owner}/{name} shows it: the model object, its latest version, and the version's
`openapi_schema` as Cog writes it, built from the schema file.

Cog moves each enum input into a component named after the input (`{"title": <name>, "description": "An
enumeration.", "enum": [...], "type": ...}`) and leaves `allOf: [{"$ref": ...}]` in its place, beside the
input's default, x-order and description; every other keyword (nullable, format, bounds, items) stays
inline.
"""

from __future__ import annotations

import copy
from typing import Any

from staging.fake_replicate.schemas import ModelSchema

OPENAPI_VERSION = "3.0.2"
COG_VERSION = "0.16.8"
# Version timestamps are not known for the schema files; a fixed one keeps answers reproducible.
VERSION_CREATED_AT = "2025-01-01T00:00:00.000000Z"


def to_openapi(schema: ModelSchema) -> dict[str, Any]:
    """The version's `openapi_schema`: input at components.schemas.Input, output at ...Output."""
    components: dict[str, Any] = {}
    inputs: dict[str, Any] = {}
    for name, prop in schema.properties.items():
        if "enum" in prop:
            components[name] = {
                "title": name,
                "description": "An enumeration.",
                "enum": copy.deepcopy(prop["enum"]),
                "type": prop.get("type", "string"),
            }
            rest = {key: copy.deepcopy(v) for key, v in prop.items() if key not in ("enum", "type", "title")}
            inputs[name] = {"allOf": [{"$ref": f"#/components/schemas/{name}"}], **rest}
        else:
            inputs[name] = copy.deepcopy(prop)
    input_schema = {
        "type": "object",
        "title": "Input",
        "required": list(schema.required),
        "properties": inputs,
    }
    output = copy.deepcopy(dict(schema.output or {}))
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "Cog", "version": "0.1.0"},
        "paths": {},
        "components": {"schemas": {"Input": input_schema, "Output": output, **components}},
    }


def version_json(schema: ModelSchema) -> dict[str, Any]:
    return {
        "id": schema.version,
        "created_at": VERSION_CREATED_AT,
        "cog_version": COG_VERSION,
        "openapi_schema": to_openapi(schema),
    }


def model_json(schema: ModelSchema) -> dict[str, Any]:
    owner, name = schema.model.split("/", 1)
    return {
        "url": f"https://replicate.com/{schema.model}",
        "owner": owner,
        "name": name,
        "description": schema.description,
        "visibility": "public",
        "is_official": schema.official,
        "run_count": 0,
        "cover_image_url": None,
        "default_example": None,
        "github_url": None,
        "paper_url": None,
        "license_url": None,
        "latest_version": version_json(schema),
    }
