"""Issue 15, the reference-image items: what a job's images may cost a worker (1), which files the CLI reads
for a job file (10), and how much the reference cache may keep (11).

The SSRF matrix that must keep holding (IPv4-mapped, NAT64, 6to4, hex and decimal host forms, every
redirect hop resolved and checked, DNS rebinding) is tested in tests/test_references.py:
test_which_addresses_are_refused, test_private_and_loopback_urls_are_refused_without_connecting,
test_redirects_into_private_ranges_or_other_schemes_are_refused,
test_every_redirect_hop_is_resolved_and_checked and
test_the_connection_goes_to_the_checked_address_not_a_rebound_one; it is not repeated here.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from PIL import Image

from clipgen.errors import ValidationError
from clipgen.images import MAX_REFERENCE_PIXELS, load_image
from clipgen.reference_cache import DAY_S, EVICTION_GRACE_S, CacheBound
from clipgen.references import ReferencePolicy, reference_resolver, resolve_reference
from clipgen.stores.local import LocalStore
from commands.cli import main
from tests.conftest import write_job

FIELD = "clip_prompts[0].scene_reference_url"


def png_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# --- 1: reference images are decoded under a budget --------------------------------------------------------


def test_1_an_image_over_the_pixel_cap_is_refused_from_its_header_and_one_at_it_is_decoded_reduced(
    tmp_path: Path,
) -> None:
    # 9000x9000 RGBA: a few hundred KB as a data: URI, ~930 MB decoded. Refused from the header, naming the
    # field, and nothing is cached.
    bomb = png_uri(Image.new("RGBA", (9000, 9000), (10, 20, 30, 255)))
    assert len(bomb) < 512 * 1024
    cache = tmp_path / "cache"
    with pytest.raises(ValidationError, match=rf"^{re.escape(FIELD)}: .*9000x9000.*megapixel"):
        resolve_reference(bomb, FIELD, cache, ReferencePolicy())
    assert not cache.exists() or list(cache.iterdir()) == []

    # At the cap it is accepted, and decoded no larger than what still covers the size a model is sent.
    side = int(MAX_REFERENCE_PIXELS**0.5)
    for name, fmt in (("cap.jpg", "JPEG"), ("cap.png", "PNG")):
        path = tmp_path / name
        Image.new("RGB", (side, side), (200, 120, 40)).save(path, fmt)
        resolved = resolve_reference(png_uri(Image.open(path)), FIELD, cache, ReferencePolicy())
        assert resolved.is_file()
        reduced = load_image(path, cover=(1920, 1080))
        assert reduced.size == (side // 2, side // 2)  # covers 1920x1080 after any crop; a quarter the pixels
        small = load_image(path, cover=(720, 480))
        assert small.width >= 720 and small.height >= 480 and small.width * small.height <= side * side // 16


# --- 10: the CLI reads only what the job means -------------------------------------------------------------


def job_naming(folder: Path, refs: list[str]) -> Path:
    prompts = [
        {"clip_index": i, "prompt": f"shot {i}", "duration": 4.0, "scene_reference_url": ref}
        for i, ref in enumerate(refs)
    ]
    return write_job(folder / "job.json", {"job_id": str(uuid4()), "clip_prompts": prompts})


def test_10_files_outside_the_job_files_folder_are_read_only_with_the_flag(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home, jobs, private = tmp_path / "home", tmp_path / "jobs", tmp_path / "private"
    for folder in (home, jobs / "images", private):
        folder.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    Image.new("RGB", (64, 36), "red").save(private / "secret.png")
    Image.new("RGB", (64, 36), "blue").save(home / "holiday.png")
    Image.new("RGB", (64, 36), "green").save(jobs / "images" / "scene.png")
    (jobs / "images" / "link.png").symlink_to(private / "secret.png")
    refs = [
        "../private/secret.png",
        str(private / "secret.png"),
        "~/holiday.png",
        "images/link.png",  # a symlink in the folder that leads out of it
        (private / "secret.png").as_uri(),
        "images/scene.png",  # the job's own image: always read
    ]
    job = job_naming(jobs, refs)

    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    for index in range(5):
        assert f"clip_prompts[{index}].scene_reference_url: " in err
        assert "outside the job file's folder" in err and "--allow-any-file" in err
    assert "clip_prompts[5]" not in err
    assert not (data_dir / "storage").exists()

    # With the flag every one is read and uploaded (submit: the same job arguments, no Prefect run needed).
    assert main(["submit", str(job), "--allow-any-file"]) == 0, capsys.readouterr().err
    queued = LocalStore(data_dir).queued_job(UUID(json.loads(job.read_text())["job_id"]))
    assert queued is not None
    scenes = [prompt["scene_reference_url"] for prompt in queued.job["clip_prompts"]]
    assert all(scene.startswith("store://clip-references/sha256/") for scene in scenes)
    assert len(set(scenes)) == 3  # secret (four ways), holiday, scene


def test_10_the_shipped_example_job_still_reads_its_images(
    example_job: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["submit", str(example_job), "--model", "veo-3.1"]) == 0, capsys.readouterr().err


# --- 11: a bounded reference cache --------------------------------------------------------------------------


def aged(path: Path, data: bytes, age_s: float) -> Path:
    path.write_bytes(data)
    when = path.stat().st_mtime - age_s
    os.utime(path, (when, when))
    return path


def content_name(data: bytes) -> str:
    return f"sha256-{hashlib.sha256(data).hexdigest()}"


def test_11_the_cache_stays_within_its_bound_and_refused_images_do_not_stay(
    tmp_path: Path, image_server: str
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    kb = 1024
    stale = aged(cache / content_name(b"stale"), b"s" * kb, 8 * DAY_S)  # unused for 8 days
    oldest = aged(cache / content_name(b"oldest"), b"o" * 400 * kb, 3 * DAY_S)
    older = aged(cache / content_name(b"older"), b"p" * 400 * kb, 2 * DAY_S)
    recent = aged(cache / content_name(b"recent"), b"r" * 400 * kb, 1 * DAY_S)
    in_use = aged(cache / content_name(b"in use"), b"u" * 300 * kb, 60)  # resolved by a running plan
    crashed = aged(cache / ".ref-crashed", b"c" * kb, EVICTION_GRACE_S + 60)  # a dead writer's leftover
    writing = aged(cache / ".ref-writing", b"w" * kb, 1)  # another process writing now
    # A reference used again now is touched, so it outlives files used later than its first fetch.
    scene = Image.new("RGB", (64, 36), "purple")
    used_again = resolve_reference(png_uri(scene), FIELD, cache, ReferencePolicy())
    when = time.time() - 4 * DAY_S
    os.utime(used_again, (when, when))
    resolve_reference(png_uri(scene), FIELD, cache, ReferencePolicy())

    bound = CacheBound(max_bytes=1024 * kb, max_age_s=7 * DAY_S)
    with reference_resolver(cache, lambda: LocalStore(tmp_path / "store"), bound=bound):
        pass
    left = {path.name for path in cache.iterdir()}
    # The stale one by age; then the least recently used until the total fits (1.5 MB -> 0.7 MB).
    assert left == {used_again.name, recent.name, in_use.name, writing.name}
    assert not {stale.name, oldest.name, older.name, crashed.name} & left
    assert sum(path.stat().st_size for path in cache.iterdir()) <= bound.max_bytes

    # Images refused when fetched leave nothing behind: no content file, no temporary file, no URL entry.
    before = set(cache.iterdir())
    for name in ("huge.png", "notes.png"):
        with pytest.raises(ValidationError, match=re.escape(FIELD)):
            resolve_reference(f"{image_server}/{name}", FIELD, cache, ReferencePolicy(allow_loopback=True))
    assert set(cache.iterdir()) == before


def test_11_the_bound_is_a_setting_with_sane_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VIDEO_GENERATOR_REFERENCE_CACHE_MAX_BYTES", raising=False)
    monkeypatch.delenv("VIDEO_GENERATOR_REFERENCE_CACHE_MAX_AGE_DAYS", raising=False)
    assert CacheBound.from_settings() == CacheBound(max_bytes=1024**3, max_age_s=7 * DAY_S)
    monkeypatch.setenv("VIDEO_GENERATOR_REFERENCE_CACHE_MAX_BYTES", "5000000")
    monkeypatch.setenv("VIDEO_GENERATOR_REFERENCE_CACHE_MAX_AGE_DAYS", "0.5")
    assert CacheBound.from_settings() == CacheBound(max_bytes=5_000_000, max_age_s=0.5 * DAY_S)


@pytest.fixture
def image_server(tmp_path: Path) -> Iterator[str]:
    """Serves an image over the pixel cap (a few hundred KB) and a text file named like an image."""
    root = tmp_path / "served"
    root.mkdir()
    Image.new("RGBA", (9000, 9000), (1, 2, 3, 255)).save(root / "huge.png", optimize=True)
    (root / "notes.png").write_text("not an image")
    handler = functools.partial(QuietHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass
