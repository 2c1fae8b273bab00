"""Reference images: http(s) URLs, file paths and data URIs, checked and made local before any paid call.

Each reference is fetched once, verified to decode as an image, and kept in a content-addressed cache so
the renderer (or a later upload to a provider) reads a local file instead of fetching again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

from clipgen.errors import MediaError, ValidationError
from clipgen.media import load_image

MAX_IMAGE_BYTES = 20 * 1024 * 1024
FETCH_TIMEOUT_S = 15.0


def resolve_reference(ref: str, field: str, cache_dir: Path) -> Path:
    """A local path to a verified image for `ref`, or ValidationError naming `field`."""
    scheme = urlsplit(ref).scheme.lower()
    if scheme in ("http", "https"):
        path = _cached(cache_dir, ref, lambda: _download(ref, field))
    elif scheme == "data":
        path = _cached(cache_dir, ref, lambda: _decode_data_uri(ref, field))
    elif scheme == "file":
        path = Path(unquote(urlsplit(ref).path))
    elif not scheme:
        path = Path(ref).expanduser()
    else:
        raise ValidationError.one(
            field, f"unsupported reference {ref[:60]!r}: use http(s), a file path or data:"
        )
    if not path.is_file():
        raise ValidationError.one(field, f"file not found: {path}")
    try:
        load_image(path)
    except MediaError as exc:
        raise ValidationError.one(field, f"not an image ({exc})") from exc
    return path.resolve()


def _cached(cache_dir: Path, key: str, fetch: Callable[[], bytes]) -> Path:
    path = cache_dir / hashlib.sha256(key.encode()).hexdigest()[:40]
    if path.is_file():
        return path
    data = fetch()
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".ref-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _download(url: str, field: str) -> bytes:
    try:
        with (
            httpx.Client(timeout=FETCH_TIMEOUT_S, follow_redirects=True, max_redirects=3) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise ValidationError.one(field, f"{url} answered HTTP {response.status_code}")
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_IMAGE_BYTES:
                    raise ValidationError.one(field, f"{url} is larger than {MAX_IMAGE_BYTES // 2**20} MB")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as exc:
        raise ValidationError.one(field, f"{url} is unreachable ({type(exc).__name__}: {exc})") from exc


def _decode_data_uri(uri: str, field: str) -> bytes:
    header, sep, payload = uri.partition(",")
    if not sep or not header.endswith(";base64"):
        raise ValidationError.one(field, "data URI must be base64: data:image/...;base64,...")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValidationError.one(field, "data URI is not valid base64") from exc
    if len(data) > MAX_IMAGE_BYTES:
        raise ValidationError.one(field, f"data URI is larger than {MAX_IMAGE_BYTES // 2**20} MB")
    return data
