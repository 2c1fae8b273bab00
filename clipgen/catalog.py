"""The seven video models: what each accepts, what it returns, and what it costs.

Facts are copied from the published Replicate input schemas (the fake Replicate API checks inputs against its
copies in clipgen/model_schemas/); the product reads no schema at run time. docs/models.md lists the
models. Where the spec and the schema disagree, the schema wins: Veo 3.1 is discrete (4|6|8 s), Hailuo 2.3 is
6|10 s, Kling v2.1 has no aspect-ratio input and needs a start image, Kling v2.5 Turbo has no 4:3/3:4.

How an aspect ratio is honoured (`AspectVia`):
- "input":  the model has an aspect_ratio input; a start image is fitted to the same ratio as well, because
            with a start image several models follow the image instead.
- "image":  the output follows the start image's shape, so the image is fitted (cropped) to the ratio first.
            Without an image only `text_aspect_ratios` are possible.
- "fixed":  the model has one output shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

AspectVia = Literal["input", "image", "fixed"]


@dataclass(frozen=True)
class ModelSpec:
    key: str
    title: str
    replicate_model: str
    # Pinned version for community models (created through /v1/predictions); None for official models.
    version: str | None
    durations: tuple[float, ...] | None
    """Discrete durations the model accepts, ascending; None for a continuous range."""
    duration_range: tuple[float, float] | None
    """(min, max) seconds for continuous models."""
    aspect_ratios: tuple[str, ...]
    aspect_via: AspectVia
    output_sizes: dict[str, tuple[int, int]]
    """(width, height) of the delivered clip for each aspect ratio, at the settings we send."""
    fps: float
    requires_image: bool
    text_aspect_ratios: tuple[str, ...] = ()
    """Ratios reachable without a start image (for aspect_via "image" models that also take text only)."""
    image_inputs: tuple[str, ...] = ()
    """Schema inputs that take image URIs."""
    takes_prompt: bool = True
    takes_negative_prompt: bool = True
    price_per_second: float = 0.0
    price_per_run: float = 0.0
    price_confirmed: bool = False
    timeout_s: float = 120.0
    character_references: str = "not used by this model"
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def max_duration(self) -> float:
        if self.durations:
            return self.durations[-1]
        assert self.duration_range is not None
        return self.duration_range[1]

    def cost(self, seconds: float) -> float:
        """Estimated price of one clip of `seconds` requested seconds, in USD."""
        return round(self.price_per_second * seconds + self.price_per_run, 4)


_P720 = {"16:9": (1280, 720), "9:16": (720, 1280), "1:1": (720, 720)}
_P1080 = {"16:9": (1920, 1080), "9:16": (1080, 1920), "1:1": (1080, 1080)}

MODELS: dict[str, ModelSpec] = {
    spec.key: spec
    for spec in (
        ModelSpec(
            key="kling-v2.1",
            title="Kling v2.1 (standard, 720p)",
            replicate_model="kwaivgi/kling-v2.1",
            version=None,
            durations=(5.0, 10.0),
            duration_range=None,
            aspect_ratios=("16:9", "9:16", "1:1"),
            aspect_via="image",
            output_sizes=_P720,
            fps=24.0,
            requires_image=True,
            image_inputs=("start_image", "end_image"),
            price_per_second=0.05,
            character_references="not sent: the model takes only start and end frames",
            notes=("start_image is required; mode standard = 720p, pro = 1080p; no aspect-ratio input.",),
        ),
        ModelSpec(
            key="kling-v2.5-turbo",
            title="Kling v2.5 Turbo Pro",
            replicate_model="kwaivgi/kling-v2.5-turbo-pro",
            version=None,
            durations=(5.0, 10.0),
            duration_range=None,
            aspect_ratios=("16:9", "9:16", "1:1"),
            aspect_via="input",
            output_sizes=_P1080,
            fps=24.0,
            requires_image=False,
            text_aspect_ratios=("16:9", "9:16", "1:1"),
            image_inputs=("start_image", "end_image"),
            price_per_second=0.07,
            price_confirmed=True,
            character_references="not sent: the model takes only start and end frames",
            notes=("aspect_ratio is ignored when start_image is given: the image is fitted instead.",),
        ),
        ModelSpec(
            key="hailuo-2.3",
            title="Hailuo 2.3 (768p)",
            replicate_model="minimax/hailuo-2.3",
            version=None,
            durations=(6.0, 10.0),
            duration_range=None,
            aspect_ratios=("16:9", "9:16", "1:1"),
            aspect_via="image",
            output_sizes={"16:9": (1366, 768), "9:16": (768, 1366), "1:1": (768, 768)},
            fps=25.0,
            requires_image=False,
            takes_negative_prompt=False,
            text_aspect_ratios=("16:9",),
            image_inputs=("first_frame_image",),
            price_per_second=0.045,
            timeout_s=300.0,
            character_references="not sent: the model takes only a first frame",
            notes=("10 s only at 768p (we send 768p); output follows the first frame's shape.",),
        ),
        ModelSpec(
            key="wan-2.5-i2v",
            title="Wan 2.5 image-to-video (720p)",
            replicate_model="wan-video/wan-2.5-i2v",
            version=None,
            durations=(5.0, 10.0),
            duration_range=None,
            aspect_ratios=("16:9", "9:16", "1:1"),
            aspect_via="image",
            output_sizes=_P720,
            fps=24.0,
            requires_image=True,
            image_inputs=("image",),
            price_per_second=0.10,
            character_references="not sent: the model takes one image",
            notes=("image is required; resolution sent explicitly (720p).",),
        ),
        ModelSpec(
            key="veo-3.1",
            title="Google Veo 3.1 (1080p, no audio)",
            replicate_model="google/veo-3.1",
            version=None,
            durations=(4.0, 6.0, 8.0),
            duration_range=None,
            aspect_ratios=("16:9", "9:16"),
            aspect_via="input",
            output_sizes={"16:9": (1920, 1080), "9:16": (1080, 1920)},
            fps=24.0,
            requires_image=False,
            text_aspect_ratios=("16:9", "9:16"),
            image_inputs=("image", "last_frame", "reference_images"),
            price_per_second=0.20,
            character_references="reference_images (scene + characters, up to 3), only at 16:9 and 8 s",
            notes=("generate_audio=false: the audio is discarded and would double the price.",),
        ),
        ModelSpec(
            key="svd",
            title="Stable Video Diffusion (25 frames)",
            replicate_model="stability-ai/stable-video-diffusion",
            version="3f0457e4619daac51203dedb472816fd4af51f3149fa7a9e0b5ffcf1b8172438",
            durations=None,
            # 25 frames written at frames_per_second + 1 fps, frames_per_second in 5..30.
            duration_range=(25 / 31, 25 / 6),
            aspect_ratios=("16:9", "9:16", "1:1"),
            aspect_via="image",
            output_sizes={"16:9": (1024, 576), "9:16": (576, 1024), "1:1": (768, 768)},
            fps=6.0,
            requires_image=True,
            takes_negative_prompt=False,
            image_inputs=("input_image",),
            takes_prompt=False,
            price_per_run=0.07,
            timeout_s=180.0,
            character_references="not sent: the model takes one image and no prompt",
            notes=("motion_bucket_id 127 (medium); price is hardware time, estimated per run.",),
        ),
        ModelSpec(
            key="cogvideox",
            title="CogVideoX 5B (text) / I2V (with a scene image)",
            replicate_model="cuuupid/cogvideox-5b",
            version="5b14e2c2c648efecc8d36c6353576552f8a124e690587212f8e8bb17ecda3d8c",
            durations=(49 / 8,),
            duration_range=None,
            # 720x480 is 3:2; we refuse other ratios rather than deliver a clip of the wrong shape.
            aspect_ratios=("3:2",),
            aspect_via="fixed",
            output_sizes={"3:2": (720, 480)},
            fps=8.0,
            requires_image=False,
            takes_negative_prompt=False,
            text_aspect_ratios=("3:2",),
            image_inputs=("image",),
            price_per_run=0.30,
            timeout_s=360.0,
            character_references="not sent: the model takes at most one image",
            notes=("49 frames at 8 fps; 20-30 steps; price is hardware time, estimated per run.",),
        ),
    )
}


def get_model(key: str) -> ModelSpec:
    """The spec for a catalog key. KeyError names the known keys."""
    try:
        return MODELS[key]
    except KeyError:
        raise KeyError(f"unknown model {key!r}; known: {', '.join(MODELS)}") from None
