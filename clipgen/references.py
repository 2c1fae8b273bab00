"""Reference images: http(s) URLs, data URIs, store:// objects and (when allowed) file paths, checked and made
local before any paid call.

Each reference is verified to decode as an image and kept in a content-addressed cache (the file name is
the sha256 of the bytes), so the renderer (or a later upload to a provider) reads a local file, and a changed
image is a new file: the plan fingerprint, which hashes each file once per path, sees the change. An http(s)
reference is revalidated on every resolve with a conditional GET (ETag / Last-Modified, kept in a small
entry per URL); a server that offers neither is fetched again each time, and its body compared by hash.

Jobs come from the Prefect UI, the API and a queue table any app can insert into, so a reference is
untrusted input:

- **http(s)** is fetched only from public addresses. The host of the URL and of every redirect hop (followed
  by `clipgen.reference_fetch`, at most MAX_REDIRECTS) is resolved, every address it resolves to is checked
  (private, loopback, link-local such as 169.254.169.254, multicast, reserved, unspecified, non-public, and
  IPv4-mapped forms of those are refused) and the connection goes to the address that was checked
  (`_PinnedTransport`), so a DNS answer that changes between the check and the connect cannot redirect the
  fetch. Loopback alone can be allowed for local staging (VIDEO_GENERATOR_ALLOW_LOOPBACK_REFERENCES); private
  ranges never are.
- **data:** URIs are decoded. Small ones only: a job travels in the flow run's parameters (Prefect refuses
  more than 512 KB) and in the queue row, so the CLI uploads larger ones, like a job's files, to the store.
- **store://clip-references/sha256/<hex>.<ext>** names an image the CLI uploaded (`clipgen.job_files`,
  `clipgen.reference_objects`). Its name is its sha256, which is also the cache's key: an image in the
  cache is used without asking the store; otherwise it is read through the store, its hash checked against
  the name, and decoded like a data: URI. No other bucket, and no other path, can be named.
- **File paths and file: URLs** would let a job read any file on the worker, so they are refused unless
  VIDEO_GENERATOR_ALLOW_FILE_REFERENCES is set.

Messages quote references shortened (`short_ref`): a data URI can be megabytes, and a URL may carry
credentials.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlsplit

from clipgen.errors import MediaError, ValidationError
from clipgen.files import atomic_write
from clipgen.images import ImageTooLarge, load_image
from clipgen.reference_cache import CacheBound, evict, touch
from clipgen.reference_fetch import download, short_ref
from clipgen.reference_objects import STORE_SCHEME, parse_store_reference, read_reference_object
from clipgen.stores.base import ClipStore

MAX_IMAGE_BYTES = 20 * 1024 * 1024
VERIFY_COVER = (64, 64)
"""Verifying a reference decodes all of its data, reduced to about this size: the check needs no pixels."""

StoreOpener = Callable[[], ClipStore]
"""Opens the store that store:// references are read from; called only when one is not in the cache."""


@dataclasses.dataclass(frozen=True)
class ReferencePolicy:
    """What a job's references may point at; from the settings unless given."""

    allow_files: bool = False
    allow_loopback: bool = False

    @classmethod
    def from_settings(cls) -> ReferencePolicy:
        from clipgen.settings import Settings

        settings = Settings()
        return cls(
            allow_files=settings.allow_file_references, allow_loopback=settings.allow_loopback_references
        )


def resolve_reference(
    ref: str,
    field: str,
    cache_dir: Path,
    policy: ReferencePolicy | None = None,
    store: StoreOpener | None = None,
) -> Path:
    """A local path to a verified image for `ref`, or ValidationError naming `field`.

    For http(s), data: and store:// references the path is content-addressed: the same bytes give the same
    path, other bytes another path, and the file at a path never changes. `store` is needed only for a
    store:// reference whose image is not in the cache yet.
    """
    policy = policy or ReferencePolicy.from_settings()
    try:
        scheme = urlsplit(ref).scheme.lower()
    except ValueError as exc:  # the job model refuses these first; a direct caller gets the same answer
        raise ValidationError.one(field, f"not a URL or data: URI ({exc})") from None
    if scheme in ("http", "https"):
        return _resolve_url(ref, field, cache_dir, policy.allow_loopback).resolve()
    if scheme == "data":
        return cache_image(decode_data_uri(ref, field), field, cache_dir, "the data URI")
    if scheme == STORE_SCHEME:
        return _resolve_stored(ref, field, cache_dir, store)
    if scheme == "file" or not scheme:
        return _resolve_file(ref, scheme, field, policy)
    raise ValidationError.one(
        field,
        f"unsupported reference {short_ref(ref)!r}: use an http(s) URL, a data: URI or a "
        f"{STORE_SCHEME}:// reference",
    )


@contextmanager
def reference_resolver(
    cache_dir: Path,
    open_store: StoreOpener,
    policy: ReferencePolicy | None = None,
    bound: CacheBound | None = None,
) -> Iterator[Callable[[str, str], Path]]:
    """A resolver for planning (`clipgen.planning.Resolver`) that opens the store the first time a
    store:// reference is not in the cache, keeps it for the job's other references, and closes it after.

    The cache is brought within its bound first (`clipgen.reference_cache`), once per job."""
    evict(cache_dir, bound or CacheBound.from_settings())
    opened: list[ClipStore] = []

    def store() -> ClipStore:
        if not opened:
            opened.append(open_store())
        return opened[0]

    try:
        yield functools.partial(resolve_reference, cache_dir=cache_dir, policy=policy, store=store)
    finally:
        for each in opened:
            close = getattr(each, "close", None)
            if callable(close):
                close()


def cache_image(data: bytes, field: str, cache_dir: Path, shown: str) -> Path:
    """`data` in the cache under its content name, once it has decoded as an image; ValidationError naming
    `field` (and calling the image `shown`) if it does not."""
    return _store_verified(cache_dir, data, field, shown).resolve()


def _resolve_stored(ref: str, field: str, cache_dir: Path, store: StoreOpener | None) -> Path:
    """An image of the references bucket: from the cache when there (its name is the same sha256), else
    read through the store, checked against its name and decoded before it is cached."""
    obj = parse_store_reference(ref, field)
    cached = cache_dir / f"sha256-{obj.digest}"
    if touch(cached):  # only verified bytes are ever written under a content name
        return cached.resolve()
    if store is None:
        raise ValidationError.one(field, f"{obj.reference} is not cached here and no store was given")
    data = read_reference_object(store(), obj, field, MAX_IMAGE_BYTES)
    return cache_image(data, field, cache_dir, obj.reference)


def _resolve_file(ref: str, scheme: str, field: str, policy: ReferencePolicy) -> Path:
    """A file on the worker, used in place (not copied) and so verified on every resolve."""
    if not policy.allow_files:
        raise ValidationError.one(
            field,
            f"file references are refused: {short_ref(ref)} would be read on the worker. Use an http(s) "
            "URL or a data: URI (the video-generator command uploads a job's files to the store and names "
            f"them {STORE_SCHEME}://), or set "
            "VIDEO_GENERATOR_ALLOW_FILE_REFERENCES=true on the worker to allow file paths",
        )
    path = Path(unquote(urlsplit(ref).path)) if scheme == "file" else Path(ref).expanduser()
    try:
        found = path.is_file()
    except (OSError, ValueError):  # ValueError: a NUL in the path
        found = False
    if not found:
        raise ValidationError.one(field, f"file not found: {path}")
    try:
        load_image(path, cover=VERIFY_COVER)
    except ImageTooLarge as exc:
        raise ValidationError.one(field, str(exc)) from None
    except MediaError as exc:
        raise ValidationError.one(field, f"not an image ({exc})") from exc
    return path.resolve()


# --- the cache: content files, and one entry per URL ------------------------------------------------------

_CONTENT_NAME = re.compile(r"sha256-[0-9a-f]{64}")
_VALIDATOR = re.compile(r"[\x20-\x7e]{1,1024}")
"""What a validator is sent back only if it looks like: printable ASCII. Another one could not be sent as a
header (the GET would fail every time, never replacing it), so it is dropped and the body compared instead."""


@dataclasses.dataclass(frozen=True)
class _Entry:
    """What the cache knows of a URL: the content of its last 200, and the validators to ask if it changed."""

    content: str
    """The content file's name in the cache directory, sha256-<hex>."""
    answered_by: str
    """sha256 of the hop that answered (after redirects): its validators describe that resource only. A
    digest, so that a URL's credentials or signed query are not written to disk."""
    etag: str | None = None
    last_modified: str | None = None

    def applies_to(self, url: str) -> bool:
        return _sha256(url) == self.answered_by

    def conditions(self) -> dict[str, str]:
        """The headers of a conditional GET; empty when the server gave no validators."""
        headers = {}
        if self.etag:
            headers["If-None-Match"] = self.etag
        if self.last_modified:
            headers["If-Modified-Since"] = self.last_modified
        return headers


def _resolve_url(url: str, field: str, cache_dir: Path, allow_loopback: bool) -> Path:
    """The content file for `url` as the server has it now, revalidated on every call.

    When the server cannot be reached (or refuses), this raises as if nothing were cached: a reference that
    cannot be checked now is not silently taken to be the image fetched last time, which may have changed.
    """
    # The policy is part of the key: what was fetched while loopback was allowed is not reused after.
    key = f"{url}\nallow_loopback={allow_loopback}"
    entry_path = cache_dir / f"url-{_sha256(key)[:40]}.json"
    entry = _read_entry(entry_path, cache_dir)
    fetched = download(url, field, allow_loopback, entry, MAX_IMAGE_BYTES)
    if fetched is None:  # 304: what the entry points at is current
        assert entry is not None  # download answers None only to a conditional request
        content = cache_dir / entry.content
        if touch(content):
            touch(entry_path)
            return content
        # Removed between the check above and the answer: ask again, unconditionally this time.
        fetched = download(url, field, allow_loopback, None, MAX_IMAGE_BYTES)
        assert fetched is not None
    path = _store_verified(cache_dir, fetched.body, field, short_ref(url))
    entry = _Entry(
        path.name, _sha256(fetched.url), _validator(fetched.etag), _validator(fetched.last_modified)
    )
    _write_atomically(entry_path, json.dumps(dataclasses.asdict(entry)).encode())
    return path


def _read_entry(entry_path: Path, cache_dir: Path) -> _Entry | None:
    """The entry for a URL, or None (so the next GET is unconditional) if it is missing, unreadable or points
    at a content file that is gone."""
    try:
        entry = _Entry(**json.loads(entry_path.read_bytes()))
    except (OSError, ValueError, TypeError):  # TypeError: not an object, or other keys
        return None
    validators = (entry.etag, entry.last_modified)
    if not all(
        isinstance(text, str) for text in (entry.content, entry.answered_by, *filter(None, validators))
    ):
        return None
    # The name is checked so that an edited entry cannot point outside the cache directory.
    if not _CONTENT_NAME.fullmatch(entry.content):
        return None
    return entry if (cache_dir / entry.content).is_file() else None


def _validator(value: str | None) -> str | None:
    return value if value is not None and _VALIDATOR.fullmatch(value) else None


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _store_verified(cache_dir: Path, data: bytes, field: str, shown: str) -> Path:
    """`data` under its content name, once it has decoded as an image; ValidationError naming `field` if not.

    A file appears under a content name only after it was verified, and holds exactly the bytes its name
    says, so finding it is proof enough: the same image is not decoded again (20 clips, many reruns).
    """
    path = cache_dir / f"sha256-{hashlib.sha256(data).hexdigest()}"
    if touch(path):
        return path

    def verify(tmp: Path) -> None:
        try:
            load_image(tmp, cover=VERIFY_COVER, field=shown)
        except ImageTooLarge as exc:
            raise ValidationError.one(field, str(exc)) from None
        except MediaError as exc:
            # The message names the reference, not the temporary file, which is gone when it is read.
            raise ValidationError.one(field, f"not an image ({str(exc).replace(str(tmp), shown)})") from exc

    _write_atomically(path, data, verify)
    return path


def _write_atomically(path: Path, data: bytes, check: Callable[[Path], None] | None = None) -> None:
    """Write `data`, `check` the written file, then put it in place (clipgen.files): a reader (another
    worker, a crash) sees the whole file or none. A content file renamed over an existing one has the same
    bytes."""
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
        if check is not None:
            check(tmp)


def decode_data_uri(uri: str, field: str) -> bytes:
    """The bytes of a base64 data: URI, or ValidationError naming `field`."""
    header, sep, payload = uri.partition(",")
    if not sep or not header.endswith(";base64"):
        raise ValidationError.one(field, "data URI must be base64: data:image/...;base64,...")
    # A base64 payload of n bytes decodes to about 3n/4: refuse a huge one before decoding it.
    if len(payload) * 3 // 4 > MAX_IMAGE_BYTES + 3:
        raise ValidationError.one(field, f"data URI is larger than {MAX_IMAGE_BYTES // 2**20} MB")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValidationError.one(field, "data URI is not valid base64") from exc
    if len(data) > MAX_IMAGE_BYTES:
        raise ValidationError.one(field, f"data URI is larger than {MAX_IMAGE_BYTES // 2**20} MB")
    return data
