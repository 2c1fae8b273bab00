"""Fetching an http(s) reference: this module owns the GET, from public addresses only, with its redirects,
size and time limits and its conditional revalidation (`clipgen.references` caches and verifies what it
returns).

The host of the URL and of every redirect hop (followed here, at most MAX_REDIRECTS) is resolved, every
address it resolves to is checked (`address_refusal`) and the connection goes to the address that was checked
(`_PinnedTransport`), so a DNS answer that changes between the check and the connect cannot redirect the
fetch.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import time
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import httpx

from clipgen.errors import ValidationError

FETCH_TIMEOUT_S = 15.0
"""Per network operation (connect, each read)."""
FETCH_DEADLINE_S = 60.0
"""For a whole fetch, redirects included, so a server that trickles bytes cannot hold planning up."""
MAX_REDIRECTS = 3
SHORT_REF_CHARS = 60
LOOPBACK_HINT = "set VIDEO_GENERATOR_ALLOW_LOOPBACK_REFERENCES=true to allow loopback for local staging"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class Revalidation(Protocol):
    """What a conditional GET needs of an earlier answer (`clipgen.references` keeps one per URL)."""

    def applies_to(self, url: str) -> bool:
        """Whether the earlier answer came from `url`: validators describe that resource only."""
        ...

    def conditions(self) -> dict[str, str]:
        """The headers of a conditional GET; empty when the server gave no validators."""
        ...


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


@dataclasses.dataclass(frozen=True)
class Fetched:
    """A 200: the body, the hop that sent it and its validators."""

    body: bytes
    url: str
    etag: str | None
    last_modified: str | None


def download(
    url: str, field: str, allow_loopback: bool, earlier: Revalidation | None, max_bytes: int
) -> Fetched | None:
    """GET `url`, following up to MAX_REDIRECTS redirects by hand, each hop checked by _PinnedTransport.

    With an `earlier` answer the GET is conditional, and None means the server answered 304 Not Modified. The
    validators go only to the hop they were taken from (earlier.applies_to): if the redirects now lead
    elsewhere, that resource is fetched whole, since a date or tag from another resource says nothing of it.
    """
    deadline = time.monotonic() + FETCH_DEADLINE_S
    shown = short_ref(url)
    current = url
    with _client(allow_loopback) as client:
        for hop in range(MAX_REDIRECTS + 1):
            via = "" if current == url else f" (redirected to {short_ref(current)})"
            same = earlier is not None and earlier.applies_to(current)
            conditions = earlier.conditions() if earlier is not None and same else {}
            try:
                with client.stream("GET", current, headers=conditions) as response:
                    if response.is_redirect and "location" in response.headers:
                        target = str(response.url.join(response.headers["location"]))
                    elif response.status_code == 304 and conditions:
                        return None
                    elif response.status_code != 200:
                        raise ValidationError.one(field, f"{shown}{via} answered HTTP {response.status_code}")
                    else:
                        return Fetched(
                            body=_read_body(response, field, f"{shown}{via}", deadline, max_bytes),
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


def _client(allow_loopback: bool) -> httpx.Client:
    """Redirects are followed by hand (`download`), so each hop's URL is checked before it is fetched."""
    return httpx.Client(
        transport=_PinnedTransport(allow_loopback),
        timeout=FETCH_TIMEOUT_S,
        follow_redirects=False,
        trust_env=False,
        headers={"Accept": "image/*"},
    )


def _read_body(response: httpx.Response, field: str, shown: str, deadline: float, max_bytes: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise ValidationError.one(field, f"{shown} is larger than {max_bytes // 2**20} MB")
        if time.monotonic() > deadline:
            raise ValidationError.one(field, f"{shown} took longer than {FETCH_DEADLINE_S:g} s to download")
        chunks.append(chunk)
    return b"".join(chunks)
