"""Reference images on Pillow: read under a budget (the pixel cap checked from the header, decoded reduced to
the size needed, a few decodes at a time), fitted to an aspect ratio and encoded for a model. This module
owns decoding images; clipgen.media owns video."""

from __future__ import annotations

import io
import math
import threading
from pathlib import Path
from typing import Literal

from PIL import Image, ImageOps

from clipgen.errors import MediaError
from clipgen.media import aspect_ratio_value

MAX_REFERENCE_PIXELS = 4096 * 4096
"""Reference images larger than this are refused from the header. The largest image a model takes is
1920x1080 (catalog output sizes); 4096x4096 leaves room for 4K frames and 12-megapixel phone photos, and
decodes to at most 64 MB (RGBA)."""


EXIF_ORIENTATION = 0x0112


MAX_CONCURRENT_DECODES = 2


_DECODES = threading.BoundedSemaphore(MAX_CONCURRENT_DECODES)
"""Image decodes at once in a process. A PNG has no reduced decoding: one at the cap holds ~100 MB until it is
reduced (64 MB decoded, a 16 MB band and the 16 MB result), so five clips decoding five different ones at
once would hold ~500 MB; two at a time cost little time (a decode is short)."""


_REDUCIBLE = frozenset({"L", "LA", "RGB", "RGBA", "CMYK", "I", "F"})
"""Modes Image.reduce handles; any other (a palette image) is converted to RGBA first."""


_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
"""What turns an image upright, by its EXIF orientation (as ImageOps.exif_transpose, which would copy the
image when it is upright already)."""


# What Pillow raises for files it cannot (or should not) decode. The bomb warning only escapes as an
# exception under an "error" warnings filter, as in the tests.
_UNDECODABLE = (
    OSError,
    SyntaxError,
    ValueError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


class ImageTooLarge(MediaError):
    """An image refused from its header: more pixels than any model uses (MAX_REFERENCE_PIXELS)."""


def load_image(path: Path, cover: tuple[int, int] | None = None, field: str | None = None) -> Image.Image:
    """The image at `path` upright and in RGB. With `cover`, decoded reduced (JPEG's DCT scaling, else
    integer box reduction) to the smallest size that still covers `cover` (width, height): what a crop to
    any ratio and a downscale to `cover` needs, at a fraction of the memory.

    The size is read from the header first: over MAX_REFERENCE_PIXELS (what no model uses; a 9000x9000 PNG
    of 314 KB decodes to ~930 MB) the image is refused before any pixel is decoded, naming `field`."""
    try:
        with Image.open(path) as image:
            _check_pixels(image, field or str(path))
            with _DECODES:
                # Under the gate: a PNG's getexif() decodes the whole image (an eXIf chunk may follow it).
                orientation = image.getexif().get(EXIF_ORIENTATION, 1)
                target = _stored_target(cover, orientation) if cover else None
                if target is not None:
                    image.draft("RGB", target)  # JPEG only: decodes at 1/2, 1/4 or 1/8 scale when it covers
                image.load()
                pixels = _reduced_rgb(image, target)
        # The whole decode is freed by now; only the reduced copy is turned upright.
        method = _UPRIGHT.get(orientation)
        return pixels.transpose(method) if method is not None else pixels
    except _UNDECODABLE as exc:
        raise MediaError(f"{path} is not an image Pillow can decode: {exc}") from exc


def _reduced_rgb(image: Image.Image, target: tuple[int, int] | None) -> Image.Image:
    """`image` in RGB, reduced by the largest integer factor that still covers `target`.

    Alpha is dropped, as convert("RGB") drops it. Pillow reduces RGBA through a premultiplied copy of the
    whole image (64 MB more at the cap, per decode), so the colour bands are reduced one at a time instead
    (16 MB more): what a transparent area shows is then its stored colour, with or without reduction."""
    factor = min(image.width // target[0], image.height // target[1]) if target else 1
    if factor <= 1:
        return image.convert("RGB")
    source = image if image.mode in _REDUCIBLE else image.convert("RGBA")
    if source.mode in ("RGBA", "LA"):
        colour = source.mode[:-1]
        reduced = Image.merge(colour, [source.getchannel(band).reduce(factor) for band in colour])
    else:
        reduced = source.reduce(factor)
    return reduced if reduced.mode == "RGB" else reduced.convert("RGB")


def load_fitted(path: Path, size: tuple[int, int]) -> Image.Image:
    """The image at `path` cropped (centred) and scaled to fill `size` exactly, upright and in RGB: decoded
    reduced to what still covers `size`, so only `size` is kept of it."""
    return ImageOps.fit(load_image(path, cover=size), size)


def _check_pixels(image: Image.Image, shown: str) -> None:
    # Pillow only warns between MAX_IMAGE_PIXELS and twice that; refuse it here instead of relying on a
    # global warnings filter, which is not thread-safe.
    limit = min(MAX_REFERENCE_PIXELS, Image.MAX_IMAGE_PIXELS or MAX_REFERENCE_PIXELS)
    if image.width * image.height > limit:
        raise ImageTooLarge(
            f"{shown} is {image.width}x{image.height} ({image.width * image.height / 1e6:.1f} megapixels), "
            f"over the {limit / 1e6:.1f} megapixel limit for reference images: no model uses more than "
            "1920x1080, so scale it down before sending it"
        )


def _stored_target(cover: tuple[int, int], orientation: int) -> tuple[int, int]:
    """`cover` in the stored orientation: an EXIF rotation by 90 degrees swaps width and height."""
    width, height = max(1, cover[0]), max(1, cover[1])
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def fit_image(
    image: Image.Image,
    aspect_ratio: str,
    mode: Literal["crop", "pad"] = "crop",
    max_size: tuple[int, int] | None = None,
) -> Image.Image:
    ratio = aspect_ratio_value(aspect_ratio)
    if mode == "crop":
        width, height = _even_shape(ratio, image.width, image.height)
        left, top = (image.width - width) // 2, (image.height - height) // 2
        fitted = image.crop((left, top, left + width, top + height))
    else:
        height = _even(max(image.height, image.width / ratio))
        width = _even(height * ratio)
        fitted = Image.new(image.mode, (width, height))
        fitted.paste(image, ((width - image.width) // 2, (height - image.height) // 2))
    if max_size is not None:
        shape = _even_shape(ratio, min(max_size[0], fitted.width), min(max_size[1], fitted.height))
        if shape != fitted.size:
            fitted = fitted.resize(shape, Image.Resampling.LANCZOS)
    return fitted


def encode_image(image: Image.Image, fmt: Literal["PNG", "JPEG"] = "JPEG", quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    if fmt == "JPEG":
        # JPEG has no alpha or palette; flatten rather than let Pillow refuse.
        rgb = image if image.mode in ("RGB", "L") else image.convert("RGB")
        rgb.save(buffer, format="JPEG", quality=quality)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def _even(value: float) -> int:
    return max(2, 2 * round(value / 2))


def _even_shape(ratio: float, max_width: int, max_height: int) -> tuple[int, int]:
    """Largest even (width, height) of `ratio` inside max_width x max_height."""
    height = max(2, 2 * math.floor(min(max_height, max_width / ratio) / 2))
    width = _even(height * ratio)
    if width > max_width:
        width = max(2, 2 * math.floor(max_width / 2))
    return width, height
