"""Realistic reference photos for tests: random pixels, so they do not compress and are as large as asked."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from clipgen.stores.base import REFERENCE_BUCKET

MB = 1024 * 1024


@dataclass(frozen=True)
class Photo:
    path: Path
    format: str  # JPEG or PNG

    @property
    def data(self) -> bytes:
        return self.path.read_bytes()

    @property
    def object_path(self) -> str:
        ext = "jpg" if self.format == "JPEG" else "png"
        return f"sha256/{hashlib.sha256(self.data).hexdigest()}.{ext}"

    @property
    def reference(self) -> str:
        return f"store://{REFERENCE_BUCKET}/{self.object_path}"


def make_photo(path: Path, image_format: str, megabytes: float) -> Photo:
    """Random pixels: incompressible, so the file is about as large as asked."""
    bytes_per_pixel = 3.0 if image_format == "PNG" else 1.2  # JPEG at quality 95 keeps about this much noise
    side = int((megabytes * MB / bytes_per_pixel) ** 0.5)
    image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    if image_format == "PNG":
        image.save(path, "PNG", compress_level=1)
    else:
        image.save(path, "JPEG", quality=95)
    return Photo(path, image_format)
