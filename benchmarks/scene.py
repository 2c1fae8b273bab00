"""A detailed scene image, so the fake's 10 s 1080p outputs weigh what a model's do.

From text alone the fake draws one still frame with a sliding bar: a 10 s 1080p clip of about 60 KB. A real
model's is megabytes (several Mbit/s), and file size is what downloads, uploads, probes and thumbnails pay
for. With a start image the fake animates it (slow zoom and pan), so every frame differs; this seeded
texture (blurred noise at three scales over a gradient) makes that about 9 MB, about 7 Mbit/s.

The image goes to the fake's Files API once. Jobs name it by its download URL, as a job names an image on
any web server: the flow fetches it like any reference, which needs
VIDEO_GENERATOR_ALLOW_LOOPBACK_REFERENCES=true, the setting for local staging against a fake on loopback.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from io import BytesIO

import httpx
from PIL import Image, ImageChops, ImageFilter

from benchmarks.common import TOKEN

SIZE = (1920, 1080)
BLUR_RADII = (0.6, 2.0, 8.0)  # one per colour channel: fine grain, texture, blotches
SEED = 8


@dataclass(frozen=True)
class Scene:
    model_input: str  # what a model is sent (the file's `urls.get`, as the provider sends uploads)
    reference: str  # what a job names (the download link, readable without a token)
    jpeg_bytes: int


def detailed_image(seed: int = SEED) -> Image.Image:
    rng = random.Random(seed)
    width, height = SIZE
    channels = [
        Image.frombytes("L", SIZE, rng.randbytes(width * height)).filter(ImageFilter.GaussianBlur(radius))
        for radius in BLUR_RADII
    ]
    gradient = Image.linear_gradient("L").resize(SIZE).convert("RGB")
    return ImageChops.blend(Image.merge("RGB", channels), gradient, 0.3)


def upload_scene(base_url: str) -> Scene:
    buffer = BytesIO()
    detailed_image().save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    response = httpx.post(
        f"{base_url}/v1/files",
        headers={"Authorization": f"Bearer {TOKEN}"},
        files={"content": ("scene.jpg", data, "image/jpeg")},
        data={"filename": "scene.jpg", "type": "image/jpeg"},
        timeout=60.0,
    )
    response.raise_for_status()
    uploaded = response.json()
    return Scene(uploaded["urls"]["get"], f"{base_url}/v1/files/{uploaded['id']}/download", len(data))
