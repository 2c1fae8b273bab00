"""Reference images as Replicate takes them: cropped to the clip's ratio, sized exactly, inline or uploaded.

This module owns sending a reference image: a small one goes inline as a data URI, a larger one through the
Files API, and each is prepared once per image and size for the provider's run.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image
from replicate.client import Client

from clipgen.images import encode_image, fit_image, load_image
from clipgen.once import OncePerKey
from clipgen.providers.replicate_api import typed

INLINE_IMAGE_BYTES = 256 * 1024
# Prepared images a provider keeps for its run: over a hundred inline ones. A job of more distinct images
# prepares again one its clips come back to after that many others.
KEPT_URI_BYTES = 48 * 1024 * 1024


class ReferenceUploads:
    def __init__(self, client: Client) -> None:
        self._client = client
        # Data URIs (up to INLINE_IMAGE_BYTES of JPEG each) and Files API links, kept for the run's clips.
        self._uris: OncePerKey[tuple[str, str, tuple[int, int]], str] = OncePerKey(KEPT_URI_BYTES, len)

    def uri(self, path: str, aspect_ratio: str, size: tuple[int, int]) -> str:
        """The image cropped to the ratio and sized exactly (SVD rounds other sizes down to multiples of 64,
        changing the shape): inline as a data URI when small, else through the Files API.

        Prepared once per image and size: clips that start together wait on the first one's gate instead of
        each decoding (and uploading) the same image; a failed preparation leaves the next clip to try."""
        return self._uris.get(
            (path, aspect_ratio, size), lambda: self._prepare_image(path, aspect_ratio, size)
        )

    def _prepare_image(self, path: str, aspect_ratio: str, size: tuple[int, int]) -> str:
        # Decoded reduced to what still covers `size`: a 4096x4096 reference never sits in memory whole.
        image = load_image(Path(path), cover=size)
        fitted = fit_image(image, aspect_ratio, "crop").resize(size, Image.Resampling.LANCZOS)
        data = encode_image(fitted, "JPEG", 90)
        if len(data) <= INLINE_IMAGE_BYTES:
            return "data:image/jpeg;base64," + base64.b64encode(data).decode()
        upload = io.BytesIO(data)
        file = typed(
            lambda: self._client.files.create(upload, filename="reference.jpg", content_type="image/jpeg")
        )
        return str(file.urls["get"])
