"""Reading a published schema as the API serves it, validating against it, and telling drift apart."""

from __future__ import annotations

from typing import Any

from clipgen.model_roles import Durations, aspect_values, durations, infer_roles
from clipgen.model_schema import InputSchema, compare, published_schema

API_ANSWER: dict[str, Any] = {
    "owner": "acme",
    "name": "clip",
    "is_official": False,
    "latest_version": {
        "id": "a" * 64,
        "openapi_schema": {
            "components": {
                "schemas": {
                    "Input": {
                        "type": "object",
                        "required": ["prompt"],
                        "properties": {
                            "prompt": {"type": "string", "title": "Prompt", "x-order": 0},
                            "seconds": {"allOf": [{"$ref": "#/components/schemas/seconds"}], "default": 4},
                            "aspect_ratio": {"$ref": "#/components/schemas/aspect_ratio"},
                            "input_reference": {
                                "anyOf": [{"type": "string", "format": "uri"}, {"type": "null"}]
                            },
                            "generate_audio": {"type": "boolean", "default": True},
                        },
                    },
                    "seconds": {"type": "integer", "enum": [4, 8, 12], "description": "An enumeration."},
                    "aspect_ratio": {"type": "string", "enum": ["portrait", "landscape"]},
                }
            }
        },
    },
}


def test_enums_written_as_refs_are_read_inline() -> None:
    schema = InputSchema.from_model_response(API_ANSWER)
    assert (schema.model, schema.version, schema.official) == ("acme/clip", "a" * 64, False)
    assert schema.properties["seconds"] == {"type": "integer", "enum": [4, 8, 12], "default": 4}
    assert schema.properties["aspect_ratio"]["enum"] == ["portrait", "landscape"]
    assert schema.properties["input_reference"] == {"type": "string", "format": "uri", "nullable": True}
    assert InputSchema.from_file(schema.as_json()) == schema


def test_roles_are_found_by_name_and_type() -> None:
    schema = InputSchema.from_model_response(API_ANSWER)
    roles = infer_roles(schema)
    assert (roles.prompt, roles.duration, roles.aspect_ratio) == ("prompt", "seconds", "aspect_ratio")
    assert (roles.first_image, roles.audio, roles.negative_prompt) == (
        "input_reference",
        "generate_audio",
        None,
    )
    assert durations(schema, roles) == Durations(discrete=(4.0, 8.0, 12.0))
    assert aspect_values("aspect_ratio", schema.properties["aspect_ratio"]) == {
        "9:16": "portrait",
        "16:9": "landscape",
    }
    # A size enum says the ratio through its sizes; an audio *file* input is not the audio switch.
    wan_t2v = published_schema("wan-video__wan-2.5-t2v")
    assert aspect_values("size", wan_t2v.properties["size"])["16:9"] == "1280*720"
    assert infer_roles(published_schema("wan-video__wan-2.5-i2v")).audio is None


def test_integer_ranges_are_discrete_durations_and_frames_need_a_rate() -> None:
    kling_v3 = published_schema("kwaivgi__kling-v3-video")
    assert durations(kling_v3, infer_roles(kling_v3)) == Durations(discrete=tuple(map(float, range(3, 16))))
    cog_i2v = published_schema("thudm__cogvideox-i2v")
    assert durations(cog_i2v, infer_roles(cog_i2v)) is None  # num_frames with no frame rate: unknown length


def test_validation_names_each_input() -> None:
    schema = InputSchema.from_model_response(API_ANSWER)
    problems = schema.problems({"seconds": 5, "aspect_ratio": "16:9", "input_reference": "c:/x.png", "x": 1})
    fields = sorted(problem.field for problem in problems)
    assert fields == [
        "input.aspect_ratio",
        "input.input_reference",
        "input.prompt",
        "input.seconds",
        "input.x",
    ]
    assert schema.problems({"prompt": "p", "input_reference": None, "seconds": 8}) == []


def test_drift_breaks_only_what_the_mapping_sends() -> None:
    built = InputSchema.from_model_response(API_ANSWER)
    raw = built.as_json()
    raw["properties"]["seconds"]["enum"] = [4, 8]  # narrowed
    raw["properties"]["seed"] = {"type": "integer"}  # new, optional
    raw["properties"].pop("generate_audio")  # removed, but we do not send it in this comparison
    raw["required"].append("style")
    raw["properties"]["style"] = {"type": "string"}
    changes = compare(built, InputSchema.from_file(raw), sent={"prompt", "seconds", "aspect_ratio"})
    assert changes.breaking == ("input style is now required", "input seconds no longer accepts 12")
    assert "new input seed" in changes.harmless and "input generate_audio was removed" in changes.harmless
