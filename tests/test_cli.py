"""The `video-generator run` command: the example job end to end, and every kind of bad input."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from clipgen import events
from clipgen.media import probe
from clipgen.stores.local import LocalStore
from commands.cli import main
from tests.conftest import EXAMPLE_JOB, REPO, write_job

JOB_ID = "7d1c2a9e-4b6f-4f0e-9a51-3c2b8e1f0a66"


def example() -> dict[str, Any]:
    job: dict[str, Any] = json.loads(EXAMPLE_JOB.read_text())
    return job


@pytest.mark.usefixtures("prefect_server")
def test_example_job_on_the_local_default(
    example_job: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "clips.json"
    assert main(["run", str(example_job), "--output", str(output)]) == 0

    printed = capsys.readouterr().out
    assert "[6/6]" in printed and "Completed: 6/6 clips" in printed
    result = json.loads(output.read_text())
    assert result["successful_clips"] == 6
    store = LocalStore(data_dir)
    for clip in result["clips"]:
        video = data_dir / "storage" / "video-clips" / JOB_ID / f"clip_{clip['clip_index']}.mp4"
        info = probe(video)
        assert info.duration >= clip["original_target_duration"] - 2.0
        assert clip["actual_duration"] == pytest.approx(info.duration, abs=1e-3)
        assert (info.width, info.height) == (1920, 1080)
        assert clip["metadata"]["preview"] is True
        thumbnail = (
            data_dir / "storage" / "clip-thumbnails" / JOB_ID / f"clip_{clip['clip_index']}_thumbnail.jpg"
        )
        with Image.open(thumbnail) as image:
            assert image.size == (320, 180)
    assert len(store.clip_records(result["job_id"])) == 6
    assert len(store.thumbnail_records(result["job_id"])) == 6
    names = [e.event for e in store.events(result["job_id"]) if e.event != events.THUMBNAIL_READY]
    assert names == [events.START] + [events.PROGRESS] * 6 + [events.COMPLETE]


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize(
    ("ratio", "model", "shape"),
    [("9:16", "kling-v2.5-turbo", (1080, 1920)), ("1:1", "wan-2.5-i2v", (720, 720))],
)
def test_portrait_and_square_jobs(
    example_job: Path,
    data_dir: Path,
    ratio: str,
    model: str,
    shape: tuple[int, int],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("VIDEO_GENERATOR_SERVER_URL", "http://watch.example:8000/")
    job = json.loads(example_job.read_text())
    job["clip_prompts"] = [p for p in job["clip_prompts"] if p["scene_reference_url"]][:3]
    job["total_clips"] = 3
    for prompt in job["clip_prompts"]:
        prompt["duration"] = 3.0
    write_job(example_job, job)

    assert main(["run", str(example_job), "--model", model, "--aspect-ratio", ratio]) == 0
    assert f"watch it live: http://watch.example:8000/jobs/{JOB_ID}/view" in capsys.readouterr().out
    for prompt in job["clip_prompts"]:
        video = data_dir / "storage" / "video-clips" / JOB_ID / f"clip_{prompt['clip_index']}.mp4"
        info = probe(video)
        assert (info.width, info.height) == shape
        thumbnail = (
            data_dir / "storage" / "clip-thumbnails" / JOB_ID / f"clip_{prompt['clip_index']}_thumbnail.jpg"
        )
        with Image.open(thumbnail) as image:
            assert image.size == (320, 180)
            assert_undistorted(image.convert("L"), shape)


@pytest.mark.usefixtures("prefect_server")
def test_every_model_runs_the_any_model_example_with_its_default_ratio(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """CogVideoX makes 3:2 clips only: naming it alone is enough (the default 16:9 is for the others)."""
    example = REPO / "examples" / "any-model.json"
    job_id = json.loads(example.read_text())["job_id"]
    assert main(["run", str(example), "--model", "cogvideox"]) == 0, capsys.readouterr()
    assert "cogvideox 3:2" in capsys.readouterr().out
    for index in range(3):
        info = probe(data_dir / "storage" / "video-clips" / job_id / f"clip_{index}.mp4")
        assert (info.width, info.height) == (720, 480)


def assert_undistorted(thumbnail: Image.Image, shape: tuple[int, int]) -> None:
    """The picture inside the black bars keeps the clip's aspect ratio: padded, not stretched."""
    box = thumbnail.point(lambda v: 255 if v > 12 else 0).getbbox()
    assert box is not None
    width, height = box[2] - box[0], box[3] - box[1]
    assert height == pytest.approx(180, abs=2)
    assert width / height == pytest.approx(shape[0] / shape[1], rel=0.05)


# --- bad input: exit 2, the field named, nothing written, no traceback ---------------------------------


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/scene.jpg"


def edit(change: Any) -> Any:
    def apply(job: dict[str, Any]) -> dict[str, Any]:
        change(job)
        return job

    return apply


BAD_JOBS = {
    "missing field": (
        edit(lambda j: j["clip_prompts"][0].pop("prompt")),
        "clip_prompts[0].prompt: Field required",
    ),
    "missing job_id": (edit(lambda j: j.pop("job_id")), "job_id: Field required"),
    "empty clip list": (edit(lambda j: j.update(clip_prompts=[], total_clips=0)), "clip_prompts:"),
    "duplicate clip_index": (
        edit(lambda j: j["clip_prompts"][1].update(clip_index=0)),
        "clip_index 0 appears more",
    ),
    "zero duration": (edit(lambda j: j["clip_prompts"][2].update(duration=0)), "clip_prompts[2].duration"),
    "negative duration": (
        edit(lambda j: j["clip_prompts"][2].update(duration=-1)),
        "clip_prompts[2].duration",
    ),
    "duration over 60": (
        edit(lambda j: j["clip_prompts"][3].update(duration=61)),
        "clip_prompts[3].duration",
    ),
    "duration the model cannot meet": (
        edit(lambda j: j["clip_prompts"][3].update(duration=13)),
        "clip_prompts[3].duration: 13 s cannot be met by kling-v2.5-turbo",
    ),
    "empty prompt": (edit(lambda j: j["clip_prompts"][0].update(prompt="   ")), "clip_prompts[0].prompt"),
    "missing image file": (
        edit(lambda j: j["clip_prompts"][1].update(scene_reference_url="images/nope.jpg")),
        "clip_prompts[1].scene_reference_url: file not found",
    ),
    "non-image reference": (
        edit(lambda j: j["clip_prompts"][1]["character_reference_urls"].append("job.json")),
        "clip_prompts[1].character_reference_urls[1]: not an image",
    ),
    "non-image data URI": (
        edit(
            lambda j: j["clip_prompts"][0].update(
                scene_reference_url="data:image/png;base64," + base64.b64encode(b"plain text").decode()
            )
        ),
        "clip_prompts[0].scene_reference_url: not an image",
    ),
    "unreachable reference": (
        edit(lambda j: j["clip_prompts"][0].update(scene_reference_url=closed_port_url())),
        "is unreachable (ConnectError",  # loopback is allowed in the test below, so it is tried
    ),
    "private reference": (
        edit(lambda j: j["clip_prompts"][0].update(scene_reference_url="http://10.0.0.5/scene.jpg")),
        "clip_prompts[0].scene_reference_url: http://10.0.0.5/scene.jpg resolves to a private address",
    ),
    "unsupported scheme": (
        edit(lambda j: j["clip_prompts"][0].update(scene_reference_url="ftp://example.com/a.jpg")),
        "clip_prompts[0].scene_reference_url: unsupported reference",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_JOBS))
def test_bad_job_is_refused_before_anything_runs(
    case: str,
    example_job: Path,
    data_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VIDEO_GENERATOR_ALLOW_LOOPBACK_REFERENCES", "true")  # for "unreachable reference"
    change, expected = BAD_JOBS[case]
    write_job(example_job, change(example()))
    assert main(["run", str(example_job)]) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert "Traceback" not in err
    assert_nothing_written(data_dir)


BAD_FLAGS = {
    "unknown model": (["--model", "sora"], "options.model: unknown model 'sora'; choose one of: kling-v2.1,"),
    "unsupported aspect ratio": (
        ["--aspect-ratio", "4:3"],
        "options.aspect_ratio: 4:3 is not supported by kling-v2.5-turbo; supported: 16:9, 9:16, 1:1",
    ),
    "malformed aspect ratio": (
        ["--aspect-ratio", "wide"],
        "options.aspect_ratio: String should match pattern",
    ),
    "veo is 16:9 or 9:16": (
        ["--model", "veo-3.1", "--aspect-ratio", "1:1"],
        "options.aspect_ratio: 1:1 is not supported by veo-3.1; supported: 16:9, 9:16",
    ),
    "image-only model without image": (
        ["--model", "wan-2.5-i2v"],
        "clip_prompts[4].scene_reference_url: wan-2.5-i2v needs a scene reference image and clip_index 4",
    ),
    "ratio only from an image": (
        ["--model", "hailuo-2.3", "--aspect-ratio", "9:16"],
        "clip_prompts[4].scene_reference_url: hailuo-2.3 makes 9:16 only from a scene image",
    ),
    "zero concurrency": (
        ["--concurrency", "0"],
        "options.concurrency: Input should be greater than or equal to 1",
    ),
    "unknown provider": (["--provider", "nope"], "unknown provider 'nope'; choose one of: "),
    "replicate without a token": (["--provider", "replicate"], "REPLICATE_API_TOKEN is not set"),
    "supabase without credentials": (
        ["--store", "supabase"],
        "SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY must be set",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FLAGS))
def test_bad_options_are_refused(
    case: str, example_job: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags, expected = BAD_FLAGS[case]
    assert main(["run", str(example_job), *flags]) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert "Traceback" not in err
    assert_nothing_written(data_dir)


def test_malformed_json_exits_2_without_traceback(tmp_path: Path, data_dir: Path) -> None:
    job = tmp_path / "job.json"
    job.write_text('{"job_id": "x", "clip_prompts": [')
    done = subprocess.run(
        [sys.executable, "-m", "commands.cli", "run", str(job)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "VIDEO_GENERATOR_DATA_DIR": str(data_dir)},
        timeout=60,
    )
    assert done.returncode == 2
    assert "JOB.json: not valid JSON" in done.stderr
    assert "Traceback" not in done.stderr
    assert_nothing_written(data_dir)


def test_bad_environment_setting_exits_2(
    example_job: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VIDEO_GENERATOR_CONCURRENCY", "many")
    assert main(["run", str(example_job)]) == 2
    assert "VIDEO_GENERATOR_CONCURRENCY" in capsys.readouterr().err


def assert_nothing_written(data_dir: Path) -> None:
    assert not (data_dir / "storage").exists()
    assert not (data_dir / "video_generator.db").exists()
    assert not (data_dir / "work").exists()


@pytest.mark.usefixtures("prefect_server")
def test_flow_file_runs_as_a_script(example_job: Path, data_dir: Path, tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL

    job = json.loads(example_job.read_text())
    job["clip_prompts"] = job["clip_prompts"][:3]
    job["total_clips"] = 3
    write_job(example_job, job)
    output = tmp_path / "clips.json"
    done = subprocess.run(
        [
            sys.executable,
            "flows/video_generator.py",
            str(example_job),
            "--model",
            "veo-3.1",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env={
            **os.environ,
            "VIDEO_GENERATOR_DATA_DIR": str(data_dir),
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        },
    )
    assert done.returncode == 0, done.stderr
    assert "Completed: 3/3 clips" in done.stdout
    assert json.loads(output.read_text())["successful_clips"] == 3


def test_malformed_supabase_url_exits_2_naming_it(
    example_job: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SUPABASE_URL", "not a url")
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", "key")
    assert main(["run", str(example_job), "--store", "supabase"]) == 2
    err = capsys.readouterr().err
    assert "SUPABASE_URL" in err and "Traceback" not in err
