"""What each model is sent, from its schema: names, enums, types, and the choices the spec asks for."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from clipgen.errors import ValidationError
from clipgen.job import ClipPrompts, GenerationOptions
from clipgen.model_inputs import ModelRequest, build_request, svd_frames_per_second
from clipgen.planning import ClipPlan, plan_job
from tests.conftest import EXAMPLE_JOB

IMAGES = EXAMPLE_JOB.parent / "images"
SENT: list[tuple[str, str, tuple[int, int]]] = []


def image_uri(path: str, ratio: str, size: tuple[int, int]) -> str:
    SENT.append((Path(path).name, ratio, size))
    return f"data:image/jpeg;base64,{Path(path).stem}"


def plan(model: str, ratio: str = "16:9", duration: float = 5.0, **prompt: Any) -> ClipPlan:
    job = ClipPrompts.model_validate(
        {
            "job_id": str(uuid4()),
            "clip_prompts": [{"clip_index": 0, "prompt": "a walk", "duration": duration, **prompt}],
        }
    )
    options = GenerationOptions(model=model, aspect_ratio=ratio)
    return plan_job(job, options, lambda ref, field: IMAGES / ref).clips[0]


def request(*args: Any, **kwargs: Any) -> ModelRequest:
    SENT.clear()
    return build_request(plan(*args, **kwargs), image_uri)


def test_kling_v21_sends_a_start_image_cropped_to_the_ratio_and_no_aspect_input() -> None:
    sent = request("kling-v2.1", "9:16", 7.0, scene_reference_url="meadow.jpg", negative_prompt="blur")
    assert sent.model == "kwaivgi/kling-v2.1" and sent.version is None
    assert sent.input == {
        "prompt": "a walk",
        "negative_prompt": "blur",
        "start_image": "data:image/jpeg;base64,meadow",
        "mode": "standard",
        "duration": 10,
    }
    assert SENT == [("meadow.jpg", "9:16", (720, 1280))]


def test_kling_v25_text_only_uses_its_aspect_ratio_input() -> None:
    assert request("kling-v2.5-turbo", "1:1", 4.0).input == {
        "prompt": "a walk",
        "negative_prompt": "",
        "aspect_ratio": "1:1",
        "duration": 5,
    }


def test_hailuo_sends_768p_and_six_seconds_for_five() -> None:
    sent = request("hailuo-2.3", "9:16", 5.0, scene_reference_url="dusk.jpg")
    assert sent.input == {
        "prompt": "a walk",
        "duration": 6,
        "resolution": "768p",
        "first_frame_image": "data:image/jpeg;base64,dusk",
    }


def test_veo_switches_audio_off_and_uses_references_only_at_16_9_and_8_s() -> None:
    with_refs = request(
        "veo-3.1",
        "16:9",
        7.0,
        scene_reference_url="meadow.jpg",
        character_reference_urls=["ada.png", "ben.png", "ada.png"],
    )
    assert with_refs.input["generate_audio"] is False
    assert with_refs.input["duration"] == 8
    assert len(with_refs.input["reference_images"]) == 3
    assert "image" not in with_refs.input
    assert "1 more not sent" in with_refs.notes["character_references"]

    portrait = request(
        "veo-3.1", "9:16", 7.0, scene_reference_url="meadow.jpg", character_reference_urls=["ada.png"]
    )
    assert "reference_images" not in portrait.input
    assert portrait.input["image"] == "data:image/jpeg;base64,meadow"
    assert portrait.notes["character_references"].startswith("not sent")


def test_svd_frames_motion_and_image_shape() -> None:
    sent = request("svd", "9:16", 3.0, scene_reference_url="desert.jpg")
    assert sent.version and sent.model == "stability-ai/stable-video-diffusion"
    assert sent.input["motion_bucket_id"] == 127
    assert sent.input["video_length"] == "25_frames_with_svd_xt"
    assert sent.input["sizing_strategy"] == "use_image_dimensions"
    fps = sent.input["frames_per_second"]
    assert 25 / (fps + 1) >= 3.0 * 1.25 - 1e-9  # the buffered request is met
    assert SENT == [("desert.jpg", "9:16", (576, 1024))]
    assert "prompt" not in sent.input


@pytest.mark.parametrize("requested", [0.81, 1.0, 2.5, 3.75, 25 / 6])
def test_svd_rate_lasts_at_least_the_requested_time(requested: float) -> None:
    fps = svd_frames_per_second(requested)
    assert 5 <= fps <= 30
    assert 25 / (fps + 1) >= min(requested, 25 / 31) - 1e-9


def test_cogvideox_steps_within_the_spec_range() -> None:
    sent = request("cogvideox", "3:2", 6.0)
    assert sent.input == {"prompt": "a walk", "steps": 25, "num_outputs": 1}
    assert 20 <= sent.input["steps"] <= 30


def test_a_negative_prompt_the_model_cannot_take_is_refused() -> None:
    with pytest.raises(
        ValidationError, match=r"clip_prompts\[0\]\.negative_prompt: hailuo-2.3 has no negative"
    ):
        plan("hailuo-2.3", negative_prompt="people")
