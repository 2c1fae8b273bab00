"""Reference images as objects of the store's private `clip-references` bucket, named by their content.

A job names such an image `store://clip-references/sha256/<hex>.<ext>`: a few dozen characters in the flow
run's parameters and the queue row, however large the image. The CLI uploads a job's image files (and its
large data: URIs) here before the job is sent; a worker reads them back through its store
(`clipgen.references.resolve_reference`).

The name is the sha256 of the bytes, so the same image is stored once however many clips, jobs and runs use
it, an upload can be skipped when the object is there already, and a worker can check that what it read is
what the job named. `<ext>` follows the decoded image format (jpg, png, webp, gif...): for people browsing
the bucket; the bytes are decoded either way.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from clipgen.errors import ValidationError
from clipgen.stores.base import REFERENCE_BUCKET, ClipStore

STORE_SCHEME = "store"
STORE_PREFIX = f"{STORE_SCHEME}://{REFERENCE_BUCKET}/"
OBJECT_PATH = re.compile(r"sha256/(?P<digest>[0-9a-f]{64})\.(?P<ext>[a-z0-9]{1,10})")
EXTENSIONS = {"jpeg": "jpg", "mpo": "jpg", "tiff": "tif"}
"""Image formats whose usual file extension is not their name in lower case (MPO: a phone's JPEG)."""


@dataclass(frozen=True)
class ReferenceObject:
    """One image in the bucket: where it is, and the sha256 its bytes must have."""

    path: str
    digest: str

    @property
    def reference(self) -> str:
        """What a job carries to name it."""
        return STORE_PREFIX + self.path


@dataclass(frozen=True)
class StagedImage:
    """An image the job will name by reference, read on the user's machine and not uploaded yet."""

    object: ReferenceObject
    data: bytes
    content_type: str


def object_for(data: bytes, image_format: str) -> ReferenceObject:
    """The object an image's bytes are stored as; `image_format` as PIL names it (JPEG, PNG, WEBP...)."""
    digest = hashlib.sha256(data).hexdigest()
    name = image_format.lower()
    ext = EXTENSIONS.get(name, name)
    return ReferenceObject(f"sha256/{digest}.{ext}", digest)


def is_store_reference(ref: str) -> bool:
    try:
        return urlsplit(ref).scheme.lower() == STORE_SCHEME
    except ValueError:
        return False


def parse_store_reference(ref: str, field: str) -> ReferenceObject:
    """The object a `store://` reference names, or ValidationError naming `field`: only the references
    bucket, and only content-addressed paths (so a job cannot name clips, thumbnails or anything else)."""
    bucket, slash, path = ref[len(f"{STORE_SCHEME}://") :].partition("/")
    if not ref.startswith(f"{STORE_SCHEME}://") or bucket != REFERENCE_BUCKET or not slash:
        raise ValidationError.one(
            field,
            f"a store reference must name the {REFERENCE_BUCKET} bucket: {STORE_PREFIX}sha256/<hex>.<ext>",
        )
    match = OBJECT_PATH.fullmatch(path)
    if match is None:
        raise ValidationError.one(
            field,
            f"{path[:80]!r} is not a reference image's name: sha256/ then the 64 lowercase hex digits of "
            "the image's sha256, a dot and its extension (e.g. jpg)",
        )
    return ReferenceObject(path, match["digest"])


def read_reference_object(store: ClipStore, obj: ReferenceObject, field: str, max_bytes: int) -> bytes:
    """The object's bytes, read through `store`, checked against its name; ValidationError naming `field`
    when it is missing, too large or not the image its name says."""
    with tempfile.TemporaryDirectory(prefix="ref-object-") as tmp:
        dest = Path(tmp) / "object"
        try:
            store.read_object(REFERENCE_BUCKET, obj.path, dest)
        except FileNotFoundError:
            raise ValidationError.one(
                field,
                f"{obj.reference} is not in the store's {REFERENCE_BUCKET} bucket (the video-generator "
                "command uploads a job's images to the store it is given: was it another store?)",
            ) from None
        if dest.stat().st_size > max_bytes:
            raise ValidationError.one(field, f"{obj.reference} is larger than {max_bytes // 2**20} MB")
        data = dest.read_bytes()
    if hashlib.sha256(data).hexdigest() != obj.digest:
        raise ValidationError.one(
            field, f"the stored object {obj.path} does not have the sha256 its name says: it was altered"
        )
    return data


def upload_staged(store: ClipStore, images: Iterable[StagedImage]) -> list[ReferenceObject]:
    """Put each image into the references bucket unless it is there already; the ones sent, in order.

    Safe to repeat and to race: an object's name is its content, so a second upload of it (by another
    submit, at the same moment) writes the same bytes.
    """
    sent: list[ReferenceObject] = []
    seen: set[str] = set()
    for image in images:
        if image.object.path in seen or store.has_object(REFERENCE_BUCKET, image.object.path):
            continue
        seen.add(image.object.path)
        with tempfile.TemporaryDirectory(prefix="ref-upload-") as tmp:
            source = Path(tmp) / Path(image.object.path).name
            source.write_bytes(image.data)
            store.put_object(REFERENCE_BUCKET, image.object.path, source, image.content_type)
        sent.append(image.object)
    return sent
