"""Which input of a model plays which part of a clip, found from the inputs' names and types.

This module owns the role mapping: prompt, negative prompt, duration (seconds or frames), aspect ratio or
size, first and last image, reference images, audio switch and resolution, and what each allows (the
durations, the ratios and the value that asks for each). Pure: it reads an `InputSchema` only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from clipgen.model_schema import InputSchema

# Names each role goes by on Replicate, most specific first. A name only counts when its type fits.
_NAMES: dict[str, tuple[str, ...]] = {
    "prompt": ("prompt", "text_prompt", "text"),
    "negative_prompt": ("negative_prompt",),
    "duration": ("duration", "seconds", "duration_seconds", "video_duration"),
    "frames": ("num_frames", "frames", "frame_count", "number_of_frames"),
    "fps": ("fps", "frames_per_second", "frame_rate"),
    "aspect_ratio": ("aspect_ratio", "ratio"),
    "size": ("size", "video_size", "dimensions"),
    "first_image": (
        "start_image",
        "first_frame_image",
        "image",
        "input_image",
        "input_reference",
        "first_frame",
        "init_image",
        "start_image_url",
        "image_url",
    ),
    "last_image": (
        "end_image",
        "last_frame_image",
        "last_frame",
        "last_image",
        "tail_image",
        "end_image_url",
    ),
    "reference_images": ("reference_images", "subject_images", "reference_image_urls"),
    "audio": ("generate_audio", "enable_audio", "with_audio", "audio_enabled"),
    "resolution": ("resolution", "quality"),
}
_WORD_RATIOS = {"landscape": "16:9", "portrait": "9:16", "square": "1:1"}
_STANDARD_RATIOS = ("16:9", "9:16", "1:1", "4:3", "3:4", "3:2", "2:3", "21:9", "9:21")
_SIZE = re.compile(r"^(\d{2,5})\s*[x*×]\s*(\d{2,5})$")
_RATIO = re.compile(r"^(\d{1,2}):(\d{1,2})$")
_SHORT_SIDE = re.compile(r"^(\d{3,4})p$")


@dataclass(frozen=True)
class Roles:
    """Input names by role; None where the model has no such input."""

    prompt: str | None = None
    negative_prompt: str | None = None
    duration: str | None = None
    frames: str | None = None
    fps: str | None = None
    aspect_ratio: str | None = None
    size: str | None = None
    first_image: str | None = None
    last_image: str | None = None
    reference_images: str | None = None
    audio: str | None = None
    resolution: str | None = None

    def names(self) -> tuple[str, ...]:
        """The inputs that play a role."""
        return tuple(name for f in fields(self) if (name := getattr(self, f.name)))


def infer_roles(schema: InputSchema, overrides: Mapping[str, str | None] | None = None) -> Roles:
    """Each role's input, from names and types; `overrides` (role -> input or None) win."""
    found: dict[str, str | None] = {}
    for role, names in _NAMES.items():
        found[role] = next((n for n in names if n in schema.properties and _fits(role, schema, n)), None)
    found.update(overrides or {})
    return Roles(**found)


def _fits(role: str, schema: InputSchema, name: str) -> bool:
    prop = schema.properties[name]
    kind = prop.get("type")
    if role in ("first_image", "last_image"):
        return kind == "string" and (prop.get("format") == "uri" or name.endswith("_url"))
    if role == "reference_images":
        return kind == "array" and (prop.get("items") or {}).get("type") == "string"
    if role == "audio":
        return kind == "boolean"
    if role in ("duration", "frames", "fps"):
        return kind in ("integer", "number")
    if role in ("aspect_ratio", "size"):
        return kind == "string" and bool(aspect_values(name, prop))
    return kind == "string"


# --- what the roles allow ---------------------------------------------------------------------------------


def aspect_values(name: str, prop: Mapping[str, Any]) -> dict[str, Any]:
    """Ratio ("16:9") -> the value that asks the model for it, from an aspect-ratio or size enum."""
    choices: dict[str, Any] = {}
    for value in prop.get("enum", ()):
        ratio = _ratio_of(str(value))
        if ratio and ratio not in choices:
            choices[ratio] = value
    return choices


def _ratio_of(value: str) -> str | None:
    text = value.strip().lower()
    if text in _WORD_RATIOS:
        return _WORD_RATIOS[text]
    if (match := _RATIO.match(text)) is not None:
        return text if int(match[1]) and int(match[2]) else None
    if (match := _SIZE.match(text)) is not None:
        return _nearest_ratio(int(match[1]), int(match[2]))
    return None


def _nearest_ratio(width: int, height: int, tolerance: float = 0.02) -> str | None:
    """A size's ratio among the standard ones, within the tolerance clips are checked with."""
    for ratio in _STANDARD_RATIOS:
        ratio_w, ratio_h = (int(part) for part in ratio.split(":"))
        if abs(width / height - ratio_w / ratio_h) <= tolerance * ratio_w / ratio_h:
            return ratio
    return None


def size_of(value: str) -> tuple[int, int] | None:
    match = _SIZE.match(value.strip().lower())
    return (int(match[1]), int(match[2])) if match else None


def short_side(value: object) -> int | None:
    """720 for "720p"; 2160 for "4k"; None for anything else."""
    text = str(value).strip().lower()
    if text == "4k":
        return 2160
    match = _SHORT_SIDE.match(text)
    return int(match[1]) if match else None


@dataclass(frozen=True)
class Durations:
    """Discrete seconds (ascending), or a continuous (low, high) range."""

    discrete: tuple[float, ...] = ()
    span: tuple[float, float] | None = None


def durations(schema: InputSchema, roles: Roles) -> Durations | None:
    """What lengths the model makes: a duration enum, an integer range, a continuous range, or frames at
    a frame rate. None when no input sets the length."""
    if roles.duration:
        return _seconds(schema.properties[roles.duration])
    if roles.frames:
        frames = _seconds(schema.properties[roles.frames])
        rate = _fps(schema, roles)
        if frames is None or rate is None:
            return None
        if frames.span:
            return Durations(span=(frames.span[0] / rate, frames.span[1] / rate))
        return Durations(discrete=tuple(count / rate for count in frames.discrete))
    return None


def _fps(schema: InputSchema, roles: Roles) -> float | None:
    if roles.fps is None:
        return None
    prop = schema.properties[roles.fps]
    rate = prop.get("default", (prop.get("enum") or [None])[0])
    return float(rate) if isinstance(rate, int | float) and rate > 0 else None


def _seconds(prop: Mapping[str, Any]) -> Durations | None:
    if "enum" in prop:
        values = sorted(float(v) for v in prop["enum"] if isinstance(v, int | float) and v > 0)
        return Durations(discrete=tuple(values)) if values else None
    low, high = prop.get("minimum"), prop.get("maximum")
    if low is None or high is None:
        default = prop.get("default")
        return Durations(discrete=(float(default),)) if isinstance(default, int | float) else None
    low = max(float(low), 1.0)
    if prop.get("type") == "integer":
        return Durations(discrete=tuple(float(v) for v in range(math.ceil(low), int(high) + 1)))
    return Durations(span=(low, float(high)))
