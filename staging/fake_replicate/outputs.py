"""What a model would deliver for an input (size, frame count, frame rate), and the inputs it refuses when it
runs although its schema allows them.

Any model gets the generic rule, read from its input values with defaults filled in: the shape from
`aspect_ratio` ("W:H", "landscape"/"portrait"), else `size` ("1280*720"), else the first image's shape, else
16:9; the short side from `resolution`/`quality` ("720p", "4k"), else 720; the length from `duration` or
`seconds`, or `num_frames` at `fps`/`frames_per_second` (24 unless given), else 5 s. Models whose real
behaviour differs have rules of their own: those that follow their image whatever the aspect ratio says
(Kling, Hailuo, Seedance 1), Hailuo's 25 fps, Kling's mode as resolution, and Stable Video Diffusion's sizing
as replicate/cog-svd does it (sizes floored to multiples of 64; ffmpeg writes the frames at
frames_per_second + 1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from staging.fake_replicate.schemas import ModelSchema

Size = tuple[int, int]
DEFAULT_FPS, DEFAULT_SECONDS, DEFAULT_SHORT_SIDE = 24, 5, 720
_NAMED_RATIOS = {"landscape": (16, 9), "portrait": (9, 16)}
_NAMED_SHORT_SIDES = {"2k": 1440, "4k": 2160, "8k": 4320}
KLING_MODES = {"standard": 720, "pro": 1080, "4k": 2160}
# Models whose output takes the first image's shape even when an aspect_ratio is sent (their schemas say
# "Ignored if start_image is provided" / "if an image is used"; Hailuo has no aspect_ratio at all).
FOLLOWS_IMAGE = ("kwaivgi/kling-", "minimax/hailuo-", "bytedance/seedance-1")
COGVIDEOX = frozenset({"cuuupid/cogvideox-5b", "thudm/cogvideox-i2v"})
SVD = "stability-ai/stable-video-diffusion"
SVD_MAX_W, SVD_MAX_H = 1024, 576


class PlanError(ValueError):
    """The model could not produce anything from this input (the prediction fails with this message)."""


@dataclass(frozen=True)
class OutputPlan:
    width: int
    height: int
    frames: int
    fps: int

    @property
    def duration(self) -> float:
        return self.frames / self.fps

    def shortened(self) -> OutputPlan:
        return replace(self, frames=max(1, self.frames // 2))


def scene_fields(schema: ModelSchema) -> tuple[str, ...]:
    """The inputs whose image sets the output's shape (and is rendered as its scene), in order of
    preference: the first-frame inputs, then the first reference image."""
    arrays = [name for name in schema.image_fields() if schema.properties[name].get("type") == "array"]
    return (*schema.first_frame_fields(), *(f"{name}.0" for name in arrays))


def plan_output(model: str, values: dict[str, Any], image_size: Size | None) -> OutputPlan:
    """`values` is the input with the schema's defaults filled in; `image_size` that of the scene image."""
    if model == SVD:
        frames = 25 if values["video_length"] == "25_frames_with_svd_xt" else 14
        width, height = _svd_size(values["sizing_strategy"], _need(image_size))
        return OutputPlan(width, height, frames, values["frames_per_second"] + 1)
    if model in COGVIDEOX:
        return OutputPlan(720, 480, 49, 8)
    follows = model.startswith(FOLLOWS_IMAGE)
    if model.startswith("kwaivgi/kling-"):
        short = KLING_MODES.get(str(values.get("mode")), 1080)
        return generic_plan(values, image_size, follows_image=True, short=short)
    if model.startswith("minimax/hailuo-"):
        return generic_plan(values, image_size, follows_image=True, fps=25)
    plan = generic_plan(values, image_size, follows_image=follows)
    if model == "openai/sora-2" and image_size is not None:
        _same_ratio("input_reference", image_size, (plan.width, plan.height))
    return plan


def generic_plan(
    values: dict[str, Any],
    image_size: Size | None,
    *,
    follows_image: bool = False,
    short: int | None = None,
    fps: int | None = None,
) -> OutputPlan:
    """The clip any model makes from its input (see the module's docstring)."""
    short = short or _short_side_asked(values)
    asked_fps = _positive(values.get("fps")) or _positive(values.get("frames_per_second"))
    fps = fps or round(asked_fps or DEFAULT_FPS)
    ratio = _ratio(values.get("aspect_ratio"))
    exact = _exact_size(values.get("size"))
    if follows_image and image_size is not None:
        width, height = _short_side(image_size, short)
    elif ratio is not None:
        width, height = _short_side(ratio, short)
    elif exact is not None:
        width, height = exact
    else:
        width, height = _short_side(image_size or (16, 9), short)
    return OutputPlan(width, height, _frames(values, fps), fps)


def _frames(values: dict[str, Any], fps: int) -> int:
    for key in ("duration", "seconds"):
        seconds = _positive(values.get(key))
        if seconds:
            return max(1, round(seconds * fps))
    frames = _positive(values.get("num_frames"))
    if frames:
        return int(frames)
    # Nothing asked (or seedance's -1, "the model picks"): the fake picks 5 s.
    return DEFAULT_SECONDS * fps


def _positive(value: object) -> float | None:
    """A positive number from a number or a string such as "5" or "5s"; None otherwise."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*s?\s*", value)
        value = float(match[1]) if match else None
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _short_side_asked(values: dict[str, Any]) -> int:
    for key in ("resolution", "quality"):
        value = values.get(key)
        if isinstance(value, str):
            text = value.strip().lower()
            match = re.fullmatch(r"(\d+)p", text)
            if match:
                return int(match[1])
            if text in _NAMED_SHORT_SIDES:
                return _NAMED_SHORT_SIDES[text]
    return DEFAULT_SHORT_SIDE


def _ratio(value: object) -> Size | None:
    if not isinstance(value, str):
        return None
    if value in _NAMED_RATIOS:
        return _NAMED_RATIOS[value]
    match = re.fullmatch(r"(\d+):(\d+)", value.strip())
    return (int(match[1]), int(match[2])) if match and int(match[1]) and int(match[2]) else None


def _exact_size(value: object) -> Size | None:
    match = re.fullmatch(r"\s*(\d+)\s*[*x×]\s*(\d+)\s*", value) if isinstance(value, str) else None
    return (_even(int(match[1])), _even(int(match[2]))) if match else None


def _same_ratio(field: str, image: Size, video: Size) -> None:
    if abs(image[0] / image[1] - video[0] / video[1]) > 0.02:
        raise PlanError(
            f"Invalid input: {field} must have the video's aspect ratio ({video[0]}x{video[1]}), "
            f"not {image[0]}x{image[1]}"
        )


def _need(image_size: Size | None) -> Size:
    if image_size is None:
        raise PlanError("this model needs an input image")
    return image_size


def _even(value: float) -> int:
    return max(2, 2 * round(value / 2))


def _short_side(size: Size, short: int) -> Size:
    """The image's aspect ratio with its shorter side at `short`; the longer side rounded to even."""
    width, height = size
    if width >= height:
        return _even(short * width / height), short
    return short, _even(short * height / width)


def _svd_size(strategy: str, size: Size) -> Size:
    width, height = size
    if strategy == "crop_to_16_9":
        return SVD_MAX_W, SVD_MAX_H
    if strategy == "maintain_aspect_ratio":
        # cog-svd's SizingStrategy.maintain_aspect_ratio, step for step (it only ever shrinks).
        aspect = width / height
        if aspect >= 1:
            new_w = min(width, SVD_MAX_W)
            new_h = int(new_w / aspect)
        else:
            new_h = min(height, SVD_MAX_H)
            new_w = int(new_h * aspect)
        if new_h > SVD_MAX_H:
            new_h, new_w = SVD_MAX_H, int(SVD_MAX_H * aspect)
        if new_w > SVD_MAX_W:
            new_w, new_h = SVD_MAX_W, int(SVD_MAX_W / aspect)
        width, height = new_w, new_h
    elif max(width, height) > SVD_MAX_W:
        # use_image_dimensions: cog-svd takes the image as it is, which would run a real GPU out of memory
        # for a large image; the fake caps the long side instead of pretending that works.
        scale = SVD_MAX_W / max(width, height)
        width, height = int(width * scale), int(height * scale)
    width, height = width - width % 64, height - height % 64
    if width <= 0 or height <= 0:
        raise PlanError(f"input image is too small: {size[0]}x{size[1]} leaves no 64-pixel block")
    return width, height
