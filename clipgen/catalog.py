"""The catalog: each model we know is its published schema (clipgen/model_schemas/) plus the facts below.

This module owns a model's facts: everything about a model that its schema cannot say lives in its
`ModelFacts` entry here (price, deadline, delivered size, values we always send, notes), and the rest is read
from the schema by clipgen/model_roles.py. docs/models.md is generated from this catalog. Where the spec and
the schema disagree, the schema wins: Veo 3.1 is discrete (4|6|8 s), Hailuo 2.3 is 6|10 s, Kling v2.1 has no
aspect-ratio input and needs a start image, Kling v2.5 Turbo has no 4:3/3:4.

Prices are per second of requested video at the settings we send, from the schema files' `pricing` (most
read through third parties; `price_confirmed` marks Replicate's own figure). Audio is switched off wherever a
model has the switch: it doubles some prices and the clip's audio is not used.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from clipgen.model_roles import Durations
from clipgen.model_schema import InputSchema, published_schema
from clipgen.model_spec import ModelFacts, ModelSpec, build_spec, facts_for_any

SVD_FRAMES = 25
SVD_MOTION = 127  # "medium" motion, as the spec asks
COGVIDEOX_STEPS = 25  # the spec's 20-30 range; the model's default (50) doubles the run time
VEO_MAX_REFERENCES = 3
_SILENT = "the model's audio switch is sent off: its audio is not used and is billed"
_START_ONLY = "not sent: the model takes only start and end frames"


def _facts() -> tuple[ModelFacts, ...]:
    """Every catalog model, the seven original ones first (the order of the docs' table and of `--help`).
    Partial schemas (Luma Ray 2, PixVerse v5, Wan 2.5 text-to-video) are left out of the catalog;
    `--model owner/name` still runs them."""
    by_key = {
        facts.key: facts
        for family in (_kling, _minimax_and_wan, _google_and_openai, _seedance, _community)
        for facts in family()
    }
    return tuple(by_key[key] for key in ORDER)


ORDER = (
    "kling-v2.1",
    "kling-v2.5-turbo",
    "hailuo-2.3",
    "wan-2.5-i2v",
    "veo-3.1",
    "svd",
    "cogvideox",
    "kling-v2.6",
    "kling-v3",
    "seedance-1-pro",
    "seedance-1-lite",
    "seedance-2.0",
    "sora-2",
    "hailuo-2.3-fast",
    "hailuo-02",
    "veo-3.1-lite",
    "veo-3.1-fast",
)


def _kling() -> tuple[ModelFacts, ...]:
    """Kling (Kuaishou): start and end frames, 5-15 s."""
    return (
        ModelFacts(
            key="kling-v2.1",
            title="Kling v2.1 (standard, 720p)",
            schema=published_schema("kwaivgi__kling-v2.1"),
            fixed={"mode": "standard"},
            short_side=720,
            price_per_second=0.05,
            character_references=_START_ONLY,
            notes=("start_image is required; mode standard = 720p, pro = 1080p; no aspect-ratio input.",),
        ),
        ModelFacts(
            key="kling-v2.5-turbo",
            title="Kling v2.5 Turbo Pro",
            schema=published_schema("kwaivgi__kling-v2.5-turbo-pro"),
            short_side=1080,
            price_per_second=0.07,
            price_confirmed=True,
            character_references=_START_ONLY,
            notes=("aspect_ratio is ignored when start_image is given: the image is fitted instead.",),
        ),
        ModelFacts(
            key="kling-v2.6",
            title="Kling v2.6 (1080p, no audio)",
            schema=published_schema("kwaivgi__kling-v2.6"),
            short_side=1080,
            price_per_second=0.07,
            price_confirmed=True,
            character_references="not sent: the model takes only a start frame",
            notes=(f"{_SILENT} ($0.07/s instead of $0.14/s).",),
        ),
        ModelFacts(
            key="kling-v3",
            title="Kling v3 (standard, 720p, no audio)",
            schema=published_schema("kwaivgi__kling-v3-video"),
            fixed={"mode": "standard"},
            short_side=720,
            price_per_second=0.168,
            timeout_s=300.0,
            character_references=_START_ONLY,
            notes=("Durations 3-15 s; mode standard (720p); audio off.",),
        ),
    )


def _minimax_and_wan() -> tuple[ModelFacts, ...]:
    """Hailuo (MiniMax) and Wan: the output follows the first frame."""
    return (
        ModelFacts(
            key="hailuo-2.3",
            title="Hailuo 2.3 (768p)",
            schema=published_schema("minimax__hailuo-2.3"),
            fixed={"resolution": "768p"},  # 10 s exists only at 768p
            text_aspect_ratios=("16:9",),
            fps=25.0,
            price_per_second=0.045,
            timeout_s=300.0,
            character_references="not sent: the model takes only a first frame",
            notes=("10 s only at 768p (we send 768p); output follows the first frame's shape.",),
        ),
        ModelFacts(
            key="hailuo-2.3-fast",
            title="Hailuo 2.3 Fast (768p, image to video)",
            schema=published_schema("minimax__hailuo-2.3-fast"),
            fixed={"resolution": "768p"},
            fps=25.0,
            timeout_s=300.0,
            character_references="not sent: the model takes only a first frame",
            notes=("first_frame_image is required; no price published.",),
        ),
        ModelFacts(
            key="hailuo-02",
            title="Hailuo 02 (768p)",
            schema=published_schema("minimax__hailuo-02"),
            fixed={"resolution": "768p"},  # its default, 1080p, makes 6 s only
            text_aspect_ratios=("16:9",),
            fps=25.0,
            timeout_s=300.0,
            character_references="not sent: the model takes only first and last frames",
            notes=("output follows the first frame's shape; 16:9 from text; no price published.",),
        ),
        ModelFacts(
            key="wan-2.5-i2v",
            title="Wan 2.5 image-to-video (720p)",
            schema=published_schema("wan-video__wan-2.5-i2v"),
            # Sent explicitly: the service's default has been reported to differ.
            fixed={"resolution": "720p"},
            price_per_second=0.10,
            character_references="not sent: the model takes one image",
            request_notes={"audio": "the model adds audio; it is kept in the file as delivered"},
            notes=("image is required; resolution sent explicitly (720p).",),
        ),
    )


def _google_and_openai() -> tuple[ModelFacts, ...]:
    """Veo (Google) and Sora (OpenAI): an aspect-ratio input, a few discrete durations."""
    return (
        ModelFacts(
            key="veo-3.1",
            title="Google Veo 3.1 (1080p, no audio)",
            schema=published_schema("google__veo-3.1"),
            fixed={"resolution": "1080p"},
            price_per_second=0.20,
            character_references="reference_images (scene + characters, up to 3), only at 16:9 and 8 s",
            quirk="veo_references",
            notes=("generate_audio=false: the audio is discarded and would double the price.",),
        ),
        ModelFacts(
            key="veo-3.1-lite",
            title="Google Veo 3.1 Lite (720p)",
            schema=published_schema("google__veo-3.1-lite"),
            fixed={"resolution": "720p"},  # 1080p needs 8 s
            price_per_second=0.05,
            character_references="not sent: the model takes only first and last frames",
            notes=("no audio switch, negative prompt or reference images.",),
        ),
        ModelFacts(
            key="veo-3.1-fast",
            title="Google Veo 3.1 Fast (1080p, no audio)",
            schema=published_schema("google__veo-3.1-fast"),
            fixed={"resolution": "1080p"},
            price_per_second=0.10,
            character_references="not sent: the model takes only first and last frames",
            notes=(f"{_SILENT} ($0.10/s instead of $0.15/s).",),
        ),
        ModelFacts(
            key="sora-2",
            title="OpenAI Sora 2 (720p)",
            schema=published_schema("openai__sora-2"),
            price_per_second=0.10,
            timeout_s=600.0,
            character_references="not sent: the model takes only a start frame",
            notes=("aspect_ratio is landscape/portrait (16:9/9:16); audio is always generated.",),
        ),
    )


def _seedance() -> tuple[ModelFacts, ...]:
    """Seedance (ByteDance): whole-second durations and seven ratios."""
    return (
        ModelFacts(
            key="seedance-1-pro",
            title="Seedance 1 Pro (720p)",
            schema=published_schema("bytedance__seedance-1-pro"),
            fixed={"resolution": "720p"},  # its default, 1080p, costs 2.5 times as much
            # 3-12 s: sources disagree on 2 as the minimum, so it is not offered.
            durations=Durations(discrete=tuple(float(s) for s in range(3, 13))),
            price_per_second=0.06,
            timeout_s=300.0,
            character_references="not sent: the model takes only first and last frames",
            notes=("resolution sent as 720p; the schema's default is 1080p at $0.15/s.",),
        ),
        ModelFacts(
            key="seedance-1-lite",
            title="Seedance 1 Lite (720p)",
            schema=published_schema("bytedance__seedance-1-lite"),
            fixed={"resolution": "720p"},
            price_per_second=0.036,
            timeout_s=300.0,
            character_references="not sent: reference images cannot be combined with a first frame",
            notes=("Durations 2-12 s; resolution sent as 720p.",),
        ),
        ModelFacts(
            key="seedance-2.0",
            title="Seedance 2.0 (720p, no audio)",
            schema=published_schema("bytedance__seedance-2.0"),
            fixed={"resolution": "720p"},
            # -1 asks the model to choose; wrappers use 4-15 s.
            durations=Durations(discrete=tuple(float(s) for s in range(4, 16))),
            price_per_second=0.18,
            timeout_s=300.0,
            character_references="not sent: reference images cannot be combined with a first frame",
            notes=(f"{_SILENT} (generate_audio defaults to true).",),
        ),
    )


def _community() -> tuple[ModelFacts, ...]:
    """Community models, run by pinned version and priced by hardware time."""
    return (
        ModelFacts(
            key="svd",
            title="Stable Video Diffusion (25 frames)",
            schema=published_schema("stability-ai__stable-video-diffusion"),
            community=True,
            fixed={
                "video_length": "25_frames_with_svd_xt",
                # The image is already cropped and sized to the output shape; keep it as is.
                "sizing_strategy": "use_image_dimensions",
                "motion_bucket_id": SVD_MOTION,
            },
            # 25 frames written at frames_per_second + 1 fps, frames_per_second in 5..30.
            durations=Durations(span=(SVD_FRAMES / 31, SVD_FRAMES / 6)),
            output_sizes={"16:9": (1024, 576), "9:16": (576, 1024), "1:1": (768, 768)},
            fps=6.0,
            price_per_second=0.0,
            price_per_run=0.07,
            timeout_s=180.0,
            character_references="not sent: the model takes one image and no prompt",
            request_notes={"prompt": "not sent: Stable Video Diffusion takes no prompt"},
            quirk="svd_frame_rate",
            notes=("motion_bucket_id 127 (medium); price is hardware time, estimated per run.",),
        ),
        ModelFacts(
            key="cogvideox",
            title="CogVideoX 5B (text to video)",
            schema=published_schema("cuuupid__cogvideox-5b"),
            community=True,
            fixed={"steps": COGVIDEOX_STEPS, "num_outputs": 1},
            durations=Durations(discrete=(49 / 8,)),
            # 720x480 is 3:2; we refuse other ratios rather than deliver a clip of the wrong shape.
            aspect_via="fixed",
            aspect_ratios=("3:2",),
            text_aspect_ratios=("3:2",),
            output_sizes={"3:2": (720, 480)},
            fps=8.0,
            price_per_second=0.0,
            price_per_run=0.30,
            timeout_s=360.0,
            character_references="not sent: the model takes at most one image",
            request_notes={"scene_reference": "not sent: CogVideoX 5B is text-to-video"},
            notes=("49 frames at 8 fps; 20-30 steps; price is hardware time, estimated per run.",),
        ),
    )


MODELS: dict[str, ModelSpec] = {facts.key: build_spec(facts) for facts in _facts()}


def get_model(key: str) -> ModelSpec:
    """The spec for a catalog key. KeyError names the known keys."""
    try:
        return MODELS[key]
    except KeyError:
        raise KeyError(f"unknown model {key!r}; known: {', '.join(MODELS)}") from None


def spec_for(model: str, schema: Mapping[str, Any] | None) -> ModelSpec:
    """A catalog key's spec, or (with its `schema` in the file format) one for a model outside the catalog.
    UnusableModel when that schema leaves a clip's length or shape unknown."""
    if schema is None:
        return get_model(model)
    return _spec_from_schema(json.dumps(schema, sort_keys=True))


@functools.lru_cache(maxsize=32)
def _spec_from_schema(schema_json: str) -> ModelSpec:
    return build_spec(facts_for_any(InputSchema.from_file(json.loads(schema_json))))
