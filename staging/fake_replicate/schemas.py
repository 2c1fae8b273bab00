"""The models the fake knows, from their published input schemas (the JSON files beside this module), and
input validation that answers like Replicate's API does.

Replicate validates `input` with a Go JSON-schema library before it creates anything; its 422 lists one
`- <field>: <description>` line per problem, and `invalid_fields` holds the same as objects. The messages
here follow that library's wording. Two deliberate differences: unknown input fields are refused (Replicate
usually drops them silently, which would hide a misspelt field in our own requests), and an integer input
must be a JSON integer, not 5.0.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

# Community models run a pinned version through POST /v1/predictions; the models endpoint only serves
# official models and answers 404 for these, as Replicate does.
COMMUNITY_MODELS = frozenset(
    {"stability-ai/stable-video-diffusion", "cuuupid/cogvideox-5b", "thudm/cogvideox-i2v"}
)
IMAGE_FIELDS = frozenset(
    {"start_image", "end_image", "image", "first_frame_image", "input_image", "last_frame"}
    | {"reference_images"}
)
_VERSION = re.compile(r"^[0-9a-f]{64}$")
_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


@dataclass(frozen=True)
class InvalidField:
    type: str
    field: str
    description: str

    def as_json(self) -> dict[str, str]:
        return {"type": self.type, "field": self.field, "description": self.description}


@dataclass(frozen=True)
class ModelSchema:
    model: str
    version: str
    required: tuple[str, ...]
    properties: dict[str, dict[str, Any]]

    @property
    def official(self) -> bool:
        return self.model not in COMMUNITY_MODELS

    def with_defaults(self, values: dict[str, Any]) -> dict[str, Any]:
        """The input as the model sees it: schema defaults filled in where a field was not sent."""
        filled = {name: prop["default"] for name, prop in self.properties.items() if "default" in prop}
        filled.update(values)
        return filled

    def image_fields(self) -> tuple[str, ...]:
        return tuple(
            name
            for name, prop in self.properties.items()
            if name in IMAGE_FIELDS and (prop.get("format") == "uri" or prop.get("type") == "array")
        )

    def validate(self, values: dict[str, Any]) -> list[InvalidField]:
        problems = [
            InvalidField("required", "input", f"{name} is required")
            for name in self.required
            if name not in values
        ]
        problems += [unknown_field("input", name) for name in values if name not in self.properties]
        for name, value in values.items():
            if name in self.properties:
                problems += _check(f"input.{name}", name, self.properties[name], value)
        return problems


def unknown_field(field: str, name: str) -> InvalidField:
    description = f"Additional property {name} is not allowed"
    return InvalidField("additional_property_not_allowed", field, description)


def _check(field: str, name: str, prop: dict[str, Any], value: Any) -> list[InvalidField]:
    expected = prop.get("type")
    if value is None:
        if prop.get("nullable"):
            return []
        return [InvalidField("invalid_type", field, f"Invalid type. Expected: {expected}, given: null")]
    if isinstance(expected, str) and not _TYPE_CHECKS[expected](value):
        given = _json_type(value)
        return [InvalidField("invalid_type", field, f"Invalid type. Expected: {expected}, given: {given}")]
    if "enum" in prop and value not in prop["enum"]:
        allowed = ", ".join(json.dumps(option) for option in prop["enum"])
        return [InvalidField("enum", field, f"{name} must be one of the following: {allowed}")]
    problems: list[InvalidField] = []
    if "minimum" in prop and value < prop["minimum"]:
        minimum = prop["minimum"]
        problems.append(InvalidField("number_gte", field, f"Must be greater than or equal to {minimum}"))
    if "maximum" in prop and value > prop["maximum"]:
        maximum = prop["maximum"]
        problems.append(InvalidField("number_lte", field, f"Must be less than or equal to {maximum}"))
    if prop.get("format") == "uri" and not _is_uri(value):
        problems.append(InvalidField("format", field, "Does not match format 'uri'"))
    if isinstance(value, list) and isinstance(prop.get("items"), dict):
        for index, item in enumerate(value):
            problems += _check(f"{field}.{index}", str(index), prop["items"], item)
    return problems


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else "null"


def _is_uri(value: str) -> bool:
    """What Replicate can fetch: an http(s) URL with a host, or a data: URI."""
    return bool(re.match(r"^https?://[^/?#\s]+", value)) or value.startswith("data:")


def problem_detail(problems: list[InvalidField]) -> str:
    return "".join(f"- {problem.field or '(root)'}: {problem.description}\n" for problem in problems)


# --- the schema files -----------------------------------------------------------------------------------


@functools.cache
def all_schemas() -> tuple[ModelSchema, ...]:
    """Read once, on first use (nothing is loaded at import)."""
    folder = resources.files("clipgen").joinpath("model_schemas")
    schemas = []
    for entry in sorted(folder.iterdir(), key=lambda item: item.name):
        if entry.name.endswith(".json"):
            raw = json.loads(entry.read_text(encoding="utf-8"))
            schemas.append(
                ModelSchema(
                    model=raw["model"],
                    # thudm/cogvideox-i2v has no known version id: give it a stable made-up one.
                    version=raw["version"] or fake_version(raw["model"]),
                    required=tuple(raw.get("required", ())),
                    properties=raw["properties"],
                )
            )
    return tuple(schemas)


def fake_version(model: str) -> str:
    return hashlib.sha256(f"fake-replicate:{model}".encode()).hexdigest()


def by_model(model: str) -> ModelSchema | None:
    return next((schema for schema in all_schemas() if schema.model == model), None)


def by_version(reference: str) -> ModelSchema | None:
    """A `version` as POST /v1/predictions takes it: `<64 hex>`, `owner/name:<64 hex>`, or `owner/name`
    (official models only)."""
    model, _, version = reference.rpartition(":") if ":" in reference else ("", "", reference)
    if not model and "/" in version:
        schema = by_model(version)
        return schema if schema is not None and schema.official else None
    if not _VERSION.match(version):
        return None
    schema = next((schema for schema in all_schemas() if schema.version == version), None)
    if schema is None or (model and schema.model != model):
        return None
    return schema


def rule_violation(model: str, values: dict[str, Any]) -> str | None:
    """Combinations the schema allows but the model refuses when it runs (the prediction then fails).
    `values` is the input with defaults filled in."""
    if model == "minimax/hailuo-2.3" and values["resolution"] == "1080p" and values["duration"] != 6:
        return "Invalid input: 1080p supports only a 6-second duration; 10 s videos are 768p only."
    if model == "google/veo-3.1" and values.get("reference_images"):
        if len(values["reference_images"]) > 3:
            return "Invalid input: at most 3 reference_images are supported."
        if values["aspect_ratio"] != "16:9" or values["duration"] != 8:
            return "Invalid input: reference_images only work at a 16:9 aspect ratio and 8 s duration."
    if model == "kwaivgi/kling-v2.1" and values.get("end_image") and values["mode"] != "pro":
        return "Invalid input: end_image is only supported in pro mode."
    return None
