"""What each model would deliver (size, frame count, frame rate) and a cache of rendered stand-ins.

The shape rules follow the models' documentation and, for Stable Video Diffusion, the sizing code of
replicate/cog-svd (sizes floored to multiples of 64; ffmpeg writes the frames at frames_per_second + 1).
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image

from clipgen.media import render_preview

_TEXT_16_9 = {"16:9": (16, 9), "9:16": (9, 16), "1:1": (1, 1)}
# The input whose image sets the output's shape (and is rendered as its scene), per model.
SCENE_FIELDS: dict[str, tuple[str, ...]] = {
    "kwaivgi/kling-v2.1": ("start_image",),
    "kwaivgi/kling-v2.5-turbo-pro": ("start_image", "image"),
    "minimax/hailuo-2.3": ("first_frame_image",),
    "wan-video/wan-2.5-i2v": ("image",),
    "google/veo-3.1": ("image",),
    "google/veo-3.1-fast": ("image",),
    "stability-ai/stable-video-diffusion": ("input_image",),
    "thudm/cogvideox-i2v": ("image",),
    "cuuupid/cogvideox-5b": (),
}
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


def plan_output(model: str, values: dict[str, Any], image_size: tuple[int, int] | None) -> OutputPlan:
    """`values` is the input with the schema's defaults filled in; `image_size` that of the scene image."""
    if model == "kwaivgi/kling-v2.1":
        return _timed(_short_side(_need(image_size), 1080 if values["mode"] == "pro" else 720), values, 24)
    if model == "kwaivgi/kling-v2.5-turbo-pro":
        if image_size is not None:
            return _timed(_short_side(image_size, 1080), values, 24)
        return _timed(_ratio_size(values["aspect_ratio"], 1080), values, 24)
    if model == "minimax/hailuo-2.3":
        short = 1080 if values["resolution"] == "1080p" else 768
        size = _short_side(image_size, short) if image_size else _ratio_size("16:9", short)
        return _timed(size, values, 25)
    if model == "wan-video/wan-2.5-i2v":
        return _timed(_short_side(_need(image_size), int(values["resolution"].rstrip("p"))), values, 24)
    if model in ("google/veo-3.1", "google/veo-3.1-fast"):
        return _timed(_ratio_size(values["aspect_ratio"], int(values["resolution"].rstrip("p"))), values, 24)
    if model == "stability-ai/stable-video-diffusion":
        frames = 25 if values["video_length"] == "25_frames_with_svd_xt" else 14
        width, height = _svd_size(values["sizing_strategy"], _need(image_size))
        return OutputPlan(width, height, frames, values["frames_per_second"] + 1)
    if model in ("cuuupid/cogvideox-5b", "thudm/cogvideox-i2v"):
        return OutputPlan(720, 480, 49, 8)
    raise PlanError(f"no output rule for {model}")


def _timed(size: tuple[int, int], values: dict[str, Any], fps: int) -> OutputPlan:
    return OutputPlan(size[0], size[1], int(values["duration"]) * fps, fps)


def _need(image_size: tuple[int, int] | None) -> tuple[int, int]:
    if image_size is None:
        raise PlanError("this model needs an input image")
    return image_size


def _even(value: float) -> int:
    return max(2, 2 * round(value / 2))


def _short_side(size: tuple[int, int], short: int) -> tuple[int, int]:
    """The image's aspect ratio with its shorter side at `short`; the longer side rounded to even."""
    width, height = size
    if width >= height:
        return _even(short * width / height), short
    return short, _even(short * height / width)


def _ratio_size(aspect_ratio: str, short: int) -> tuple[int, int]:
    ratio_w, ratio_h = _TEXT_16_9[aspect_ratio]
    return _short_side((ratio_w, ratio_h), short)


def _svd_size(strategy: str, size: tuple[int, int]) -> tuple[int, int]:
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


# --- rendering ------------------------------------------------------------------------------------------


class RenderCache:
    """Rendered stand-in clips, keyed by shape, frame count, frame rate and scene image. Thread-safe: each
    key renders once even when several predictions want it at the same time, and at most a CPU's worth of
    renders run at once so a burst of predictions does not thrash."""

    def __init__(self, folder: Path, max_parallel: int | None = None) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._slots = threading.BoundedSemaphore(max_parallel or os.cpu_count() or 2)

    def render(self, plan: OutputPlan, scene: Image.Image | None, scene_key: str | None) -> Path:
        name = f"{plan.width}x{plan.height}-{plan.frames}f-{plan.fps}fps-{scene_key or 'text'}.mp4"
        path = self.folder / name
        with self._lock:
            key_lock = self._key_locks.setdefault(name, threading.Lock())
        with key_lock:
            if not path.exists():
                with self._slots:
                    # The frame shows the clip's shape rather than the prompt: a cached clip serves many
                    # prompts, and the shape is what a staging run wants to see anyway.
                    label = f"{plan.width}x{plan.height} · {plan.frames} frames at {plan.fps} fps"
                    render_preview(
                        path,
                        width=plan.width,
                        height=plan.height,
                        duration=plan.duration,
                        fps=plan.fps,
                        prompt=label,
                        scene_image=scene,
                        caption="FAKE REPLICATE",
                    )
        return path


@functools.cache
def shared_cache() -> RenderCache:
    """One cache per process, made on first use and removed at exit: every fake server shares it."""
    folder = Path(tempfile.mkdtemp(prefix="fake-replicate-renders-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return RenderCache(folder)


def write_corrupt(dest: Path, size: int = 64 * 1024) -> None:
    """Bytes that start like an MP4 (an `ftyp` box) and then are garbage: no decoder can play them."""
    header = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"
    dest.write_bytes(header + b"\xde\xad\xbe\xef" * ((size - len(header)) // 4))
