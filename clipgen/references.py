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
  here, at most MAX_REDIRECTS) is resolved, every address it resolves to is checked (private, loopback,
  link-local such as 169.254.169.254, multicast, reserved, unspecified, non-public, and IPv4-mapped forms of
  those are refused) and the connection goes to the address that was checked (`_PinnedTransport`), so a DNS
  answer that changes between the check and the connect cannot redirect the fetch. Loopback alone can be
  allowed for local staging (VIDEO_GENERATOR_ALLOW_LOOPBACK_REFERENCES); private ranges never are.
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
import ipaddress
import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from clipgen.errors import MediaError, ValidationError
from clipgen.files import atomic_write
from clipgen.media import ImageTooLarge, load_image
from clipgen.reference_cache import CacheBound, evict, touch
from clipgen.reference_objects import STORE_SCHEME, parse_store_reference, read_reference_object
from clipgen.stores.base import ClipStore

MAX_IMAGE_BYTES = 20 * 1024 * 1024
FETCH_TIMEOUT_S = 15.0
"""Per network operation (connect, each read)."""
FETCH_DEADLINE_S = 60.0
"""For a whole fetch, redirects included, so a server that trickles bytes cannot hold planning up."""
MAX_REDIRECTS = 3
VERIFY_COVER = (64, 64)
"""Verifying a reference decodes all of its data, reduced to about this size: the check needs no pixels."""
SHORT_REF_CHARS = 60
LOOPBACK_HINT = "set VIDEO_GENERATOR_ALLOW_LOOPBACK_REFERENCES=true to allow loopback for local staging"

StoreOpener = Callable[[], ClipStore]
"""Opens the store that store:// references are read from; called only when one is not in the cache."""
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


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


def short_ref(ref: str) -> str:
    """`ref` fit for a message: without a URL's user:password, and at most SHORT_REF_CHARS long."""
    try:
        parts = urlsplit(ref)
        if parts.scheme.lower() in ("http", "https") and "@" in parts.netloc:
            ref = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    except ValueError:
        pass
    return ref if len(ref) <= SHORT_REF_CHARS else ref[: SHORT_REF_CHARS - 1] + "…"


def address_refusal(address: IPAddress, allow_loopback: bool = False) -> str | None:
    """Why a reference fetch must not connect to `address` ("a private address 10.0.0.5"), or None."""
    effective = _embedded_ipv4(address) or address
    kind = _address_kind(effective, allow_loopback)
    if kind is None:
        return None
    return f"{kind} address {address}" + (f" (IPv4 {effective})" if effective is not address else "")


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (::ffff:a.b.c.d, 6to4, NAT64 64:ff9b::a.b.c.d), where the
    packets really go. (On an IPv6-only network with DNS64 every IPv4 site resolves to 64:ff9b::/96.)"""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.ipv4_mapped or address.sixtofour


def _address_kind(address: IPAddress, allow_loopback: bool) -> str | None:
    if address.is_loopback:
        return None if allow_loopback else "a loopback"
    if address.is_link_local:
        return "a link-local"  # 169.254.169.254, the cloud metadata service, is one
    if address.is_multicast:
        return "a multicast"
    if address.is_unspecified:
        return "an unspecified"
    if address.is_private:
        return "a private"
    if address.is_reserved:
        return "a reserved"
    if not address.is_global:
        return "a non-public"  # e.g. 100.64.0.0/10, carrier-grade NAT
    return None


class _Refused(Exception):
    """A hop of a fetch would connect where references may not come from."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(reason)
        self.url = url
        self.reason = reason


def _checked_addresses(host: str, port: int, allow_loopback: bool, url: str) -> list[str]:
    """Every address `host` resolves to, if all of them are allowed; else _Refused naming one that is not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise _Refused(url, f"its host {host} does not resolve ({exc})") from exc
    addresses: list[str] = []
    for info in infos:
        text = str(info[4][0])
        address = ipaddress.ip_address(text)
        refusal = address_refusal(address, allow_loopback)
        if refusal is not None:
            loopback = (_embedded_ipv4(address) or address).is_loopback
            hint = f" ({LOOPBACK_HINT})" if loopback else ""
            raise _Refused(url, f"resolves to {refusal}; only public addresses are fetched{hint}")
        if text not in addresses:
            addresses.append(text)
    return addresses


class _PinnedTransport(httpx.BaseTransport):
    """Connects to the address that was checked, not to whatever the name resolves to next.

    Why a transport: checking the name and then letting httpx resolve it again would leave a window in which
    a DNS answer with a short TTL changes to 127.0.0.1 or 10.x (DNS rebinding). Here every request (so every
    redirect hop) is resolved once, all of its addresses are checked, and the request is sent to one of
    those addresses with the URL's host in the Host header and as the TLS server name, so virtual hosting
    and certificate checks still see the real host name. No connection is kept alive, so a TLS connection
    verified for one host is never reused for another host on the same address. Environment proxies are
    not used (trust_env=False): a proxy would resolve the name itself.
    """

    def __init__(self, allow_loopback: bool) -> None:
        self._allow_loopback = allow_loopback
        self._inner = httpx.HTTPTransport(limits=httpx.Limits(max_keepalive_connections=0), trust_env=False)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        host = url.raw_host.decode("ascii")
        port = url.port or (443 if url.scheme == "https" else 80)
        addresses = _checked_addresses(host, port, self._allow_loopback, str(url))
        failure: httpx.ConnectError | None = None
        for address in addresses:
            pinned = httpx.Request(
                request.method,
                url.copy_with(host=address),
                headers=request.headers,  # keeps Host: the URL's own host
                stream=request.stream,
                extensions={**request.extensions, "sni_hostname": host},
            )
            try:
                return self._inner.handle_request(pinned)
            except httpx.ConnectError as exc:  # the host's next address, as a resolving client would
                failure = exc
        assert failure is not None  # getaddrinfo returns at least one address or raises
        raise failure

    def close(self) -> None:
        self._inner.close()


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

    def conditions(self) -> dict[str, str]:
        """The headers of a conditional GET; empty when the server gave no validators."""
        headers = {}
        if self.etag:
            headers["If-None-Match"] = self.etag
        if self.last_modified:
            headers["If-Modified-Since"] = self.last_modified
        return headers


@dataclasses.dataclass(frozen=True)
class _Fetched:
    """A 200: the body, the hop that sent it and its validators."""

    body: bytes
    url: str
    etag: str | None
    last_modified: str | None


def _resolve_url(url: str, field: str, cache_dir: Path, allow_loopback: bool) -> Path:
    """The content file for `url` as the server has it now, revalidated on every call.

    When the server cannot be reached (or refuses), this raises as if nothing were cached: a reference that
    cannot be checked now is not silently taken to be the image fetched last time, which may have changed.
    """
    # The policy is part of the key: what was fetched while loopback was allowed is not reused after.
    key = f"{url}\nallow_loopback={allow_loopback}"
    entry_path = cache_dir / f"url-{_sha256(key)[:40]}.json"
    entry = _read_entry(entry_path, cache_dir)
    fetched = _download(url, field, allow_loopback, entry)
    if fetched is None:  # 304: what the entry points at is current
        assert entry is not None  # _download answers None only to a conditional request
        content = cache_dir / entry.content
        if touch(content):
            touch(entry_path)
            return content
        # Removed between the check above and the answer: ask again, unconditionally this time.
        fetched = _download(url, field, allow_loopback, None)
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


# --- the fetch --------------------------------------------------------------------------------------------


def _download(url: str, field: str, allow_loopback: bool, entry: _Entry | None) -> _Fetched | None:
    """GET `url`, following up to MAX_REDIRECTS redirects by hand, each hop checked by _PinnedTransport.

    With an `entry` the GET is conditional, and None means the server answered 304 Not Modified. The
    validators go only to the hop they were taken from (entry.answered_by): if the redirects now lead
    elsewhere, that resource is fetched whole, since a date or tag from another resource says nothing of it.
    """
    deadline = time.monotonic() + FETCH_DEADLINE_S
    shown = short_ref(url)
    current = url
    with httpx.Client(
        transport=_PinnedTransport(allow_loopback),
        timeout=FETCH_TIMEOUT_S,
        follow_redirects=False,
        trust_env=False,
        headers={"Accept": "image/*"},
    ) as client:
        for hop in range(MAX_REDIRECTS + 1):
            via = "" if current == url else f" (redirected to {short_ref(current)})"
            same = entry is not None and _sha256(current) == entry.answered_by
            conditions = entry.conditions() if entry is not None and same else {}
            try:
                with client.stream("GET", current, headers=conditions) as response:
                    if response.is_redirect and "location" in response.headers:
                        target = str(response.url.join(response.headers["location"]))
                    elif response.status_code == 304 and conditions:
                        return None
                    elif response.status_code != 200:
                        raise ValidationError.one(field, f"{shown}{via} answered HTTP {response.status_code}")
                    else:
                        return _Fetched(
                            body=_read_body(response, field, f"{shown}{via}", deadline),
                            url=current,
                            etag=response.headers.get("etag"),
                            last_modified=response.headers.get("last-modified"),
                        )
            except _Refused as exc:
                where = shown if exc.url == url else f"{shown} redirects to {short_ref(exc.url)}, which"
                raise ValidationError.one(field, f"{where} {exc.reason}") from None
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise ValidationError.one(
                    field, f"{shown}{via} is unreachable ({type(exc).__name__}: {exc})"
                ) from exc
            if urlsplit(target).scheme.lower() not in ("http", "https"):
                raise ValidationError.one(
                    field, f"{shown} redirects to {short_ref(target)!r}: only http(s) redirects are followed"
                )
            if hop == MAX_REDIRECTS:
                break
            current = target
    raise ValidationError.one(field, f"{shown} redirects more than {MAX_REDIRECTS} times")


def _read_body(response: httpx.Response, field: str, shown: str, deadline: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > MAX_IMAGE_BYTES:
            raise ValidationError.one(field, f"{shown} is larger than {MAX_IMAGE_BYTES // 2**20} MB")
        if time.monotonic() > deadline:
            raise ValidationError.one(field, f"{shown} took longer than {FETCH_DEADLINE_S:g} s to download")
        chunks.append(chunk)
    return b"".join(chunks)


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
