"""Input validation that answers like Replicate's API does.

Replicate validates `input` with a Go JSON-schema library (gojsonschema) before it creates anything; its
422 lists one `- <field>: <description>` line per problem, and `invalid_fields` holds the same as objects.
The checks here are the `jsonschema` library's, run on the model's OpenAPI input schema as GET
/v1/models/{owner}/{name} serves it (enums behind `$ref`s), with OpenAPI's `nullable`; the messages follow
gojsonschema's wording. Two deliberate differences: unknown input fields are refused (Replicate usually drops
them silently, which would hide a misspelt field in our own requests), and an integer input must be a JSON
integer, not 5.0 (draft 4's integer).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import jsonschema
from jsonschema import Draft4Validator, ValidationError

from staging.fake_replicate.openapi import to_openapi
from staging.fake_replicate.schemas import ModelSchema


@dataclass(frozen=True)
class InvalidField:
    type: str
    field: str
    description: str

    def as_json(self) -> dict[str, str]:
        return {"type": self.type, "field": self.field, "description": self.description}


def unknown_field(field: str, name: str) -> InvalidField:
    description = f"Additional property {name} is not allowed"
    return InvalidField("additional_property_not_allowed", field, description)


def problem_detail(problems: list[InvalidField]) -> str:
    return "".join(f"- {problem.field or '(root)'}: {problem.description}\n" for problem in problems)


def validate_input(schema: ModelSchema, values: dict[str, Any]) -> list[InvalidField]:
    """Every problem with `values` as the model's input, required ones first."""
    document = to_openapi(schema)
    root = dict(document["components"]["schemas"]["Input"], additionalProperties=False)
    root["components"] = document["components"]
    validator = _Validator(root, format_checker=_FORMATS)
    problems = [problem for error in validator.iter_errors(values) for problem in _describe(error)]
    return sorted(problems, key=lambda problem: problem.type != "required")


def _properties(
    validator: Any, properties: dict[str, Any], instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    """Draft 4's `properties`, except that null is valid for a `nullable` input whatever else its schema
    says (OpenAPI 3.0's keyword, which JSON Schema does not know)."""
    if not isinstance(instance, dict):
        return
    for name, sub in properties.items():
        if name in instance and not (instance[name] is None and sub.get("nullable")):
            yield from validator.descend(instance[name], sub, path=name, schema_path=name)


_Validator = jsonschema.validators.extend(Draft4Validator, {"properties": _properties})  # type: ignore[no-untyped-call]
_FORMATS = jsonschema.FormatChecker(formats=())


@_FORMATS.checks("uri")
def _is_uri(value: object) -> bool:
    """What Replicate can fetch: an http(s) URL with a host, or a data: URI."""
    if not isinstance(value, str):
        return True
    return bool(re.match(r"^https?://[^/?#\s]+", value)) or value.startswith("data:")


_WORDING = {
    "minimum": ("number_gte", "Must be greater than or equal to {}"),
    "maximum": ("number_lte", "Must be less than or equal to {}"),
    "minLength": ("string_gte", "String length must be greater than or equal to {}"),
    "maxLength": ("string_lte", "String length must be less than or equal to {}"),
    "minItems": ("array_min_items", "Array must have at least {} items"),
    "maxItems": ("array_max_items", "Array must have at most {} items"),
    "format": ("format", "Does not match format '{}'"),
}


def _describe(error: ValidationError) -> list[InvalidField]:
    """One jsonschema error in gojsonschema's words (an unknown-fields error becomes one per field)."""
    where = "input" + "".join(f".{part}" for part in error.absolute_path)
    # Set on every error that iter_errors yields (the stubs also allow "unset").
    keyword, value, instance = (
        str(error.validator),
        cast(Any, error.validator_value),
        cast(Any, error.instance),
    )
    if keyword == "required":
        missing = [name for name in value if error.message.startswith(f"{name!r} ")]
        return [InvalidField("required", where, f"{name} is required") for name in missing[:1]]
    if keyword == "additionalProperties":
        known = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
        return [unknown_field(where, name) for name in instance if name not in known]
    if keyword == "type":
        given = _json_type(instance)
        return [InvalidField("invalid_type", where, f"Invalid type. Expected: {value}, given: {given}")]
    if keyword == "enum":
        name = str(error.absolute_path[-1]) if error.absolute_path else "input"
        allowed = ", ".join(json.dumps(option) for option in value)
        return [InvalidField("enum", where, f"{name} must be one of the following: {allowed}")]
    if keyword in _WORDING:
        kind, wording = _WORDING[keyword]
        return [InvalidField(kind, where, wording.format(value))]
    return [InvalidField(keyword, where, error.message)]


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
