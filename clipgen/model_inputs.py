"""Replicate inputs for each model, from its published schema. Pure: images come through a callback.

Every value sent is one the schema allows; anything a model cannot honour was refused by planning already.
What each model does with character references is recorded in the clip's metadata (`ModelRequest.notes`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from clipgen.catalog import ModelSpec, get_model
from clipgen.planning import ClipPlan

ImageToUri = Callable[[str, str, tuple[int, int]], str]
"""(local image path, aspect ratio, size to send) -> a URI Replicate can read (data URI or uploaded file)."""

SVD_FRAMES = 25
SVD_MOTION = 127  # "medium" motion, as the spec asks
COGVIDEOX_STEPS = 25  # the spec's 20-30 range; the model's default (50) doubles the run time
VEO_MAX_REFERENCES = 3


@dataclass(frozen=True)
class ModelRequest:
    """One prediction to create: official models by name, community models by pinned version."""

    model: str
    version: str | None
    input: dict[str, Any]
    notes: dict[str, str] = field(default_factory=dict)


def build_request(plan: ClipPlan, image_uri: ImageToUri) -> ModelRequest:
    spec = get_model(plan.model)
    builder = _BUILDERS[spec.key]
    inputs, notes = builder(plan, spec, image_uri)
    if plan.character_images and "character_references" not in notes:
        notes["character_references"] = spec.character_references
    if plan.object_images:
        notes["object_references"] = "not sent: no model in the catalog takes object references"
    return ModelRequest(model=spec.replicate_model, version=spec.version, input=inputs, notes=notes)


def svd_frames_per_second(requested: float) -> int:
    """cog-svd writes its frames at frames_per_second + 1; pick the rate that lasts at least `requested`."""
    return min(30, max(5, math.floor(SVD_FRAMES / requested) - 1))


_Built = tuple[dict[str, Any], dict[str, str]]


def _start_image(plan: ClipPlan, spec: ModelSpec, image_uri: ImageToUri) -> str | None:
    # The output follows a start image's shape, so it is cropped to the requested ratio first.
    if plan.scene_image is None:
        return None
    return image_uri(plan.scene_image, plan.aspect_ratio, spec.output_sizes[plan.aspect_ratio])


def _kling_v21(plan: ClipPlan, spec: ModelSpec, image_uri: ImageToUri) -> _Built:
    return {
        "prompt": plan.prompt,
        "negative_prompt": plan.negative_prompt,
        "start_image": _start_image(plan, spec, image_uri),
        "mode": "standard",
        "duration": int(plan.requested_duration),
    }, {}


def _kling_v25(plan: ClipPlan, spec: ModelSpec, image_uri: ImageToUri) -> _Built:
    inputs: dict[str, Any] = {
        "prompt": plan.prompt,
        "negative_prompt": plan.negative_prompt,
        "aspect_ratio": plan.aspect_ratio,
        "duration": int(plan.requested_duration),
    }
    start = _start_image(plan, spec, image_uri)
    if start:
        inputs["start_image"] = start
    return inputs, {}


def _hailuo(plan: ClipPlan, spec: ModelSpec, image_uri: ImageToUri) -> _Built:
    inputs: dict[str, Any] = {
        "prompt": plan.prompt,
        "duration": int(plan.requested_duration),
        "resolution": "768p",  # 10 s exists only at 768p
    }
    start = _start_image(plan, spec, image_uri)
    if start:
        inputs["first_frame_image"] = start
    return inputs, {}


def _wan(plan: ClipPlan, spec: ModelSpec, image_uri: ImageToUri) -> _Built:
    return {
        "image": _start_image(plan, spec, image_uri),
        "prompt": plan.prompt,
        "negative_prompt": plan.negative_prompt,
        "resolution": "720p",  # sent explicitly: the service's default has been reported to differ
        "duration": int(plan.requested_duration),
    }, {"audio": "the model adds audio; it is kept in the file as delivered"}


def _veo(plan: ClipPlan, spec: ModelSpec, image_uri: ImageToUri) -> _Built:
    inputs: dict[str, Any] = {
        "prompt": plan.prompt,
        "aspect_ratio": plan.aspect_ratio,
        "duration": int(plan.requested_duration),
        "resolution": "1080p",
        "generate_audio": False,  # the audio is discarded, and it doubles the price
    }
    if plan.negative_prompt:
        inputs["negative_prompt"] = plan.negative_prompt
    notes: dict[str, str] = {}
    size = spec.output_sizes[plan.aspect_ratio]
    references = ([plan.scene_image] if plan.scene_image else []) + plan.character_images
    if plan.character_images and plan.aspect_ratio == "16:9" and plan.requested_duration == 8:
        # Subject-consistent generation: scene and characters as references (R2V), up to three.
        inputs["reference_images"] = [image_uri(p, "16:9", size) for p in references[:VEO_MAX_REFERENCES]]
        sent = len(inputs["reference_images"])
        notes["character_references"] = f"sent as reference_images ({sent} of max {VEO_MAX_REFERENCES})"
        if len(references) > VEO_MAX_REFERENCES:
            notes["character_references"] += f"; {len(references) - VEO_MAX_REFERENCES} more not sent"
    else:
        start = _start_image(plan, spec, image_uri)
        if start:
            inputs["image"] = start
        if plan.character_images:
            notes["character_references"] = "not sent: Veo takes reference images only at 16:9 and 8 s"
    return inputs, notes


def _svd(plan: ClipPlan, spec: ModelSpec, image_uri: ImageToUri) -> _Built:
    return {
        "input_image": _start_image(plan, spec, image_uri),
        "video_length": "25_frames_with_svd_xt",
        # The image is already cropped and sized to the output shape; keep it as is.
        "sizing_strategy": "use_image_dimensions",
        "frames_per_second": svd_frames_per_second(plan.requested_duration),
        "motion_bucket_id": SVD_MOTION,
    }, {"prompt": "not sent: Stable Video Diffusion takes no prompt"}


def _cogvideox(plan: ClipPlan, spec: ModelSpec, image_uri: ImageToUri) -> _Built:
    notes = {}
    if plan.scene_image:
        notes["scene_reference"] = "not sent: CogVideoX 5B is text-to-video"
    return {"prompt": plan.prompt, "steps": COGVIDEOX_STEPS, "num_outputs": 1}, notes


_BUILDERS: dict[str, Callable[[ClipPlan, ModelSpec, ImageToUri], _Built]] = {
    "kling-v2.1": _kling_v21,
    "kling-v2.5-turbo": _kling_v25,
    "hailuo-2.3": _hailuo,
    "wan-2.5-i2v": _wan,
    "veo-3.1": _veo,
    "svd": _svd,
    "cogvideox": _cogvideox,
}
