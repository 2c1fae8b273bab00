"""Issue 15, item 1: a reference image is decoded once per distinct image per job, not once per clip.

What is counted is the real thing: every `open` of the image file in this process during a real flow run
(`sys.addaudithook`; Pillow opens a path with the builtin `open`, which raises the event). Per job, planning
verifies a file reference once, the plan's fingerprint reads its bytes (once per version of the file and
process: `clipgen.plan_fingerprint._file_digest`) and the provider decodes it once per size for the run. So
a job of six clips sharing one scene opens its scene as often as a job of two opens its own.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from PIL import Image

from clipgen.images import load_image
from clipgen.job import ClipPrompts, GenerationOptions
from clipgen.once import OncePerKey
from staging.fake_replicate.server import FakeReplicateServer
from tests.open_counter import OpenCounter, open_counter

# svd: the scene image is required and the clips are short (1.25 s at 768x768): cheap to render and fake.
OPTIONS = GenerationOptions(model="svd", aspect_ratio="1:1")


@pytest.fixture
def opens() -> Iterator[OpenCounter]:
    counter = open_counter()
    yield counter
    counter.disarm()


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeReplicateServer]:
    with FakeReplicateServer(token="test-token", latency_s=0.05) as server:
        yield server


@pytest.fixture(autouse=True)
def file_references(monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs name their scene by its path, as on a worker that allows file references."""
    monkeypatch.setenv("VIDEO_GENERATOR_ALLOW_FILE_REFERENCES", "true")


def new_scene(folder: Path, shade: int) -> Path:
    """A scene of its own for each job, so no job finds its digest cached by an earlier one (the same
    count for either job, whichever runs first)."""
    path = folder / f"scene-{shade}.png"
    gradient = Image.linear_gradient("L").resize((1600, 1200))
    Image.merge("RGB", [gradient, gradient.rotate(90), Image.new("L", gradient.size, shade)]).save(path)
    return path


def opens_for_job(opens: OpenCounter, folder: Path, clips: int, provider: str) -> int:
    """How often one flow run of a job of `clips` clips, all with one new scene, opens that file."""
    from flows.video_generator import generate_video_clips

    scene = new_scene(folder, clips)
    prompts = [
        {"clip_index": i, "prompt": f"shot {i} {uuid4()}", "duration": 1.0, "scene_reference_url": str(scene)}
        for i in range(clips)
    ]
    job = ClipPrompts.model_validate({"job_id": str(uuid4()), "clip_prompts": prompts})
    opens.arm(scene)
    state: Any = generate_video_clips(job, OPTIONS, provider=provider, store="local", return_state=True)
    count = opens.disarm()
    assert state.is_completed(), state.message
    assert state.result().successful_clips == clips
    return count


@pytest.mark.usefixtures("prefect_server")
def test_the_local_provider_decodes_a_shared_scene_once_per_job_not_per_clip(
    opens: OpenCounter, tmp_path: Path
) -> None:
    two = opens_for_job(opens, tmp_path, 2, "local")
    six = opens_for_job(opens, tmp_path, 6, "local")
    assert six == two, f"6 clips opened their scene {six} times, 2 clips {two} times"
    assert two <= 3  # planning's check, the fingerprint's digest, the provider's one decode


@pytest.mark.usefixtures("prefect_server")
def test_the_replicate_provider_decodes_a_shared_scene_once_per_job_not_per_clip(
    opens: OpenCounter, tmp_path: Path, fake: FakeReplicateServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REPLICATE_API_TOKEN", "test-token")
    monkeypatch.setenv("REPLICATE_BASE_URL", fake.base_url)
    monkeypatch.setenv("REPLICATE_POLL_INTERVAL", "0.05")
    two = opens_for_job(opens, tmp_path, 2, "replicate")
    six = opens_for_job(opens, tmp_path, 6, "replicate")
    assert six == two, f"6 clips opened their scene {six} times, 2 clips {two} times"
    assert two <= 3


def test_what_a_run_keeps_is_bounded_least_recently_used_first() -> None:
    """A job of many distinct images cannot make a provider keep them all: past the bound the image used
    longest ago is dropped, and made again only if a later clip asks for it."""
    made: list[str] = []
    kept: OncePerKey[str, bytes] = OncePerKey(max_bytes=3, size_of=len)

    def make(key: str) -> bytes:
        made.append(key)
        return key.encode()

    for key in ("a", "b", "c", "a", "d", "a", "b"):
        kept.get(key, functools.partial(make, key))
    # d pushed out b (a was used again after b); b comes back in place of c.
    assert made == ["a", "b", "c", "d", "b"]


def test_a_reduced_decode_shows_what_the_whole_one_shows(tmp_path: Path) -> None:
    """Reduction (one colour band at a time, alpha dropped as a whole decode drops it) changes the size, not
    the picture: a transparent area keeps its stored colour, and EXIF orientation is applied after."""
    stored = Image.new("RGBA", (800, 400), (0, 0, 255, 255))
    stored.paste((255, 0, 0, 0), (0, 0, 400, 400))  # the left half transparent, stored red
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: the left half on top
    path = tmp_path / "turned.png"
    stored.save(path, exif=exif)

    whole = load_image(path)
    reduced = load_image(path, cover=(100, 100))
    assert (whole.size, reduced.size) == ((400, 800), (100, 200))
    assert whole.getpixel((200, 200)) == reduced.getpixel((50, 50)) == (255, 0, 0)
    assert whole.getpixel((200, 600)) == reduced.getpixel((50, 150)) == (0, 0, 255)
