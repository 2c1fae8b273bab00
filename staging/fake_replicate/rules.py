"""Combinations a model's schema allows but the model refuses when it runs (the prediction then fails), as
the models' own input descriptions and documentation state them."""

from __future__ import annotations

from typing import Any


def rule_violation(model: str, values: dict[str, Any]) -> str | None:
    """What the model would fail with; `values` is the input with defaults filled in."""
    if (
        model.startswith("minimax/hailuo-")
        and values.get("resolution") == "1080p"
        and values["duration"] != 6
    ):
        return "Invalid input: 1080p supports only a 6-second duration; 10 s videos are 768p only."
    if model == "google/veo-3.1-lite" and values.get("resolution") == "1080p" and values["duration"] != 8:
        return "Invalid input: duration must be 8 when using 1080p resolution."
    if model == "google/veo-3.1" and values.get("reference_images"):
        if len(values["reference_images"]) > 3:
            return "Invalid input: at most 3 reference_images are supported."
        if values["aspect_ratio"] != "16:9" or values["duration"] != 8:
            return "Invalid input: reference_images only work at a 16:9 aspect ratio and 8 s duration."
    if model == "kwaivgi/kling-v2.1" and values.get("end_image") and values["mode"] != "pro":
        return "Invalid input: end_image is only supported in pro mode."
    if model.startswith("bytedance/seedance-"):
        return _seedance_violation(model, values)
    return None


def _seedance_violation(model: str, values: dict[str, Any]) -> str | None:
    frames = values.get("image") or values.get("last_frame_image")
    references = values.get("reference_images") or values.get("reference_videos")
    if frames and references:
        return "Invalid input: first/last frame images cannot be combined with reference images or videos."
    if model == "bytedance/seedance-1-lite" and references and values.get("resolution") == "1080p":
        return "Invalid input: reference_images are not supported at 1080p."
    if values.get("reference_audios") and not (frames or references):
        return "Invalid input: reference_audios need an image or video reference."
    return None
