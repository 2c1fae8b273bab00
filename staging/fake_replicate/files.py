"""The Files API's storage, and reading the image inputs of a prediction the way a model would fetch them:
data: URIs are decoded, URLs are only reachable when they name a file uploaded to this fake (there is no
internet here, and a test must not depend on one)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote_to_bytes, urlsplit

from PIL import Image

from clipgen.errors import MediaError
from clipgen.images import load_image

MAX_FILE_BYTES = 100 * 1024 * 1024  # Replicate: "Files must be less than 100MB in size"
FILE_LIFETIME_S = 24 * 3600
_FILE_URL = re.compile(r"^/v1/files/(?P<id>[a-z0-9]+)(?:/download)?/?$")


def new_id() -> str:
    """26 lowercase base32 characters, the shape of Replicate's prediction and file ids."""
    return base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp)) + f".{int(timestamp % 1 * 1e6):06d}Z"


class FileTooLarge(ValueError):
    pass


class InputImageError(ValueError):
    """An image input the model could not fetch or decode; the prediction fails with this message."""


@dataclass
class StoredFile:
    id: str
    name: str
    content_type: str
    size: int
    sha256: str
    md5: str
    metadata: dict[str, Any]
    created_at: float
    path: Path = field(repr=False)

    def as_json(self, base_url: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "content_type": self.content_type,
            "size": self.size,
            "etag": f'"{self.md5}"',
            "checksums": {"sha256": self.sha256, "md5": self.md5},
            "metadata": self.metadata,
            "created_at": iso(self.created_at),
            "expires_at": iso(self.created_at + FILE_LIFETIME_S),
            # The OpenAPI spec's example gives the file resource itself as `urls.get`; models fetch it
            # with the uploader's credentials. Either that or .../download works as a model input here.
            "urls": {"get": f"{base_url}/v1/files/{self.id}"},
        }


class FileStore:
    """Uploaded files on disk, in a folder this store owns. Thread-safe."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.max_bytes = MAX_FILE_BYTES
        self._lock = threading.Lock()
        self._files: dict[str, StoredFile] = {}
        self.uploads = 0

    def add(self, source: BinaryIO, name: str, content_type: str, metadata: dict[str, Any]) -> StoredFile:
        file_id = new_id()
        path = self.folder / file_id
        sha256, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
        with path.open("wb") as out:
            while chunk := source.read(1 << 20):
                size += len(chunk)
                if size > self.max_bytes:
                    break
                sha256.update(chunk)
                md5.update(chunk)
                out.write(chunk)
        if size > self.max_bytes:
            path.unlink()
            raise FileTooLarge(self.too_large())
        digests = sha256.hexdigest(), md5.hexdigest()
        stored = StoredFile(file_id, name, content_type, size, *digests, metadata, time.time(), path)
        with self._lock:
            self._files[file_id] = stored
            self.uploads += 1
        return stored

    def too_large(self) -> str:
        limit = self.max_bytes
        size = f"{limit >> 20}MB" if limit >= 1 << 20 else f"{limit} bytes"
        return f"Files must be less than {size} in size"

    def get(self, file_id: str) -> StoredFile | None:
        with self._lock:
            return self._files.get(file_id)

    def all(self) -> list[StoredFile]:
        with self._lock:
            return sorted(self._files.values(), key=lambda stored: stored.created_at, reverse=True)

    def delete(self, file_id: str) -> bool:
        with self._lock:
            stored = self._files.pop(file_id, None)
        if stored is not None:
            stored.path.unlink(missing_ok=True)
        return stored is not None

    def clear(self) -> None:
        with self._lock:
            files, self._files = list(self._files.values()), {}
            self.uploads = 0
        for stored in files:
            stored.path.unlink(missing_ok=True)

    # --- model inputs -----------------------------------------------------------------------------------

    def read_image(self, field_name: str, uri: str, scratch: Path) -> tuple[Image.Image, str]:
        """The decoded image behind an input URI and a digest of its bytes (for the render cache)."""
        data = self._fetch(field_name, uri)
        digest = hashlib.sha256(data).hexdigest()[:16]
        # Decode with the project's own loader (EXIF rotation, decompression-bomb limit); it takes a path.
        with tempfile.NamedTemporaryFile(dir=scratch, suffix=".img", delete=False) as handle:
            handle.write(data)
        try:
            return load_image(Path(handle.name)), digest
        except MediaError as exc:
            raise InputImageError(f"Could not read input image {field_name!r}: not an image ({exc})") from exc
        finally:
            Path(handle.name).unlink(missing_ok=True)

    def _fetch(self, field_name: str, uri: str) -> bytes:
        if uri.startswith("data:"):
            header, comma, payload = uri[5:].partition(",")
            try:
                if not comma:
                    raise ValueError("no comma")
                if header.endswith(";base64"):
                    return base64.b64decode(payload, validate=False)
                return unquote_to_bytes(payload)
            except (ValueError, binascii.Error) as exc:
                raise InputImageError(f"Could not download input image {field_name!r}: bad data URI") from exc
        match = _FILE_URL.match(urlsplit(uri).path)
        stored = self.get(match["id"]) if match else None
        if stored is None or not stored.path.exists():
            raise InputImageError(f"Could not download input image {field_name!r} from {uri}")
        return stored.path.read_bytes()
