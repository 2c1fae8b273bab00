"""Replicate inputs for a clip, by role, for any model. Pure: images come through a callback.

Every value sent is one the schema allows; anything a model cannot honour was refused by planning already,
and the request is checked against the schema once more before it is sent (`request_problems`). What each
model does with character references is recorded in the clip's metadata (`ModelRequest.notes`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from clipgen.catalog import SVD_FRAMES, VEO_MAX_REFERENCES, spec_for
from clipgen.errors import PermanentError, Problem
from clipgen.model_spec import ModelSpec

if TYPE_CHECKING:
    from clipgen.planning import ClipPlan

ImageToUri = Callable[[str, str, tuple[int, int]], str]
"""(local image path, aspect ratio, size to send) -> a URI Replicate can read (data URI or uploaded file)."""


@dataclass(frozen=True)
class ModelRequest:
    """One prediction to create: official models by name, community models by pinned version."""

    model: str
    version: str | None
    input: dict[str, Any]
    notes: dict[str, str] = field(default_factory=dict)


def build_request(plan: ClipPlan, image_uri: ImageToUri) -> ModelRequest:
    """The request for one clip. Raises PermanentError if the model's schema would refuse it (planning has
    checked the same request with placeholder image URIs, so this guards the paid call only)."""
    spec = spec_for(plan.model, plan.model_schema)
    inputs, notes = _inputs(plan, spec, image_uri)
    problems = spec.schema.problems(inputs)
    if problems:
        raise PermanentError(
            f"{spec.replicate_model} would refuse the request: {'; '.join(map(str, problems))}"
        )
    return ModelRequest(model=spec.replicate_model, version=spec.version, input=inputs, notes=notes)


def _inputs(plan: ClipPlan, spec: ModelSpec, image_uri: ImageToUri) -> tuple[dict[str, Any], dict[str, str]]:
    inputs, notes = _by_role(plan, spec, image_uri)
    if spec.quirk == "veo_references":
        _veo_references(plan, spec, image_uri, inputs, notes)
    elif spec.quirk == "svd_frame_rate":
        inputs["frames_per_second"] = svd_frames_per_second(plan.requested_duration)
    if plan.character_images and "character_references" not in notes:
        notes["character_references"] = spec.character_references
    if plan.object_images:
        notes["object_references"] = "not sent: no model in the catalog takes object references"
    return inputs, notes


PLACEHOLDER_URI = "https://example.invalid/reference.png"
"""Stands in for an image's URI when a request is built only to be checked (nothing is uploaded)."""
_JOB_FIELDS = {
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "duration": "duration",
    "frames": "duration",
    "first_image": "scene_reference_url",
}


def request_problems(plan: ClipPlan, position: int) -> list[Problem]:
    """What the model's published schema refuses in the request this clip would send, before any paid call.
    Each problem names the job field that fills the input, or the option that chose the model."""
    spec = spec_for(plan.model, plan.model_schema)
    inputs, _ = _inputs(plan, spec, lambda *_: PLACEHOLDER_URI)
    by_input = {name: role for role in _JOB_FIELDS if (name := getattr(spec.roles, role))}
    problems = []
    for problem in spec.schema.problems(inputs):
        name = problem.field.removeprefix("input.")
        if name in by_input:
            where = f"clip_prompts[{position}].{_JOB_FIELDS[by_input[name]]}"
        else:
            where = (
                "options.aspect_ratio"
                if name in (spec.roles.aspect_ratio, spec.roles.size)
                else "options.model"
            )
        problems.append(Problem(where, f"{spec.replicate_model}'s input {name} {problem.message}"))
    return problems


def svd_frames_per_second(requested: float) -> int:
    """cog-svd writes its frames at frames_per_second + 1; pick the rate that lasts at least `requested`."""
    return min(30, max(5, math.floor(SVD_FRAMES / requested) - 1))


def _by_role(plan: ClipPlan, spec: ModelSpec, image_uri: ImageToUri) -> tuple[dict[str, Any], dict[str, str]]:
    roles, props = spec.roles, spec.schema.properties
    inputs: dict[str, Any] = {}
    notes: dict[str, str] = {}
    if roles.prompt:
        inputs[roles.prompt] = plan.prompt
    else:
        notes["prompt"] = spec.request_notes.get("prompt", f"not sent: {spec.title} takes no prompt")
    negative = roles.negative_prompt
    # An empty negative prompt goes where the input is a plain string (its default is ""); a nullable one
    # is left out rather than sent empty.
    if negative and (plan.negative_prompt or not props[negative].get("nullable")):
        inputs[negative] = plan.negative_prompt
    if roles.duration:
        inputs[roles.duration] = _number(props[roles.duration], plan.requested_duration)
    elif roles.frames and roles.fps and spec.durations:
        rate = props[roles.fps].get("default", spec.fps)
        inputs[roles.frames] = round(plan.requested_duration * rate)
    chooser = roles.aspect_ratio or roles.size
    if chooser and spec.aspect_via == "input":
        inputs[chooser] = spec.aspect_values[plan.aspect_ratio]
    if roles.audio:
        inputs[roles.audio] = False  # the clip's audio is not used, and several models bill for it
    inputs.update(spec.fixed)
    if plan.scene_image and roles.first_image and spec.quirk != "veo_references":
        size = spec.output_sizes[plan.aspect_ratio]
        inputs[roles.first_image] = image_uri(plan.scene_image, plan.aspect_ratio, size)
    elif plan.scene_image and not roles.first_image:
        default = f"not sent: {spec.title} takes no start image"
        notes["scene_reference"] = spec.request_notes.get("scene_reference", default)
    notes.update({key: text for key, text in spec.request_notes.items() if key not in _CONDITIONAL})
    return inputs, notes


_CONDITIONAL = frozenset({"prompt", "scene_reference"})


def _number(prop: Mapping[str, Any], seconds: float) -> int | float:
    return int(seconds) if prop.get("type") == "integer" else seconds


def _veo_references(
    plan: ClipPlan, spec: ModelSpec, image_uri: ImageToUri, inputs: dict[str, Any], notes: dict[str, str]
) -> None:
    size = spec.output_sizes[plan.aspect_ratio]
    references = ([plan.scene_image] if plan.scene_image else []) + plan.character_images
    if plan.character_images and plan.aspect_ratio == "16:9" and plan.requested_duration == 8:
        # Subject-consistent generation: scene and characters as references (R2V), up to three.
        inputs["reference_images"] = [image_uri(p, "16:9", size) for p in references[:VEO_MAX_REFERENCES]]
        sent = len(inputs["reference_images"])
        notes["character_references"] = f"sent as reference_images ({sent} of max {VEO_MAX_REFERENCES})"
        if len(references) > VEO_MAX_REFERENCES:
            notes["character_references"] += f"; {len(references) - VEO_MAX_REFERENCES} more not sent"
        return
    if plan.scene_image:
        inputs["image"] = image_uri(plan.scene_image, plan.aspect_ratio, size)
    if plan.character_images:
        notes["character_references"] = "not sent: Veo takes reference images only at 16:9 and 8 s"
