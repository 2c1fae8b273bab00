"""What every response of `video-generator serve` carries, and what its logs leave out.

- Secrets in URLs: the API token (`?token=`, which the page must use since EventSource cannot send headers)
  and the `sig` of media links are credentials. The access log shows them as `***`, whatever spelling of
  the key the server decodes (Starlette parses the query with `parse_qsl`: `%74oken` and `tok%65n` are
  `token`; `TOKEN` is not, and is not accepted either).
- Headers: nothing is cached where a token or signed link can appear, no Referer leaves a page, nothing is
  sniffed or framed, and the default CSP allows nothing (the job page sends its own, with a nonce).
"""

from __future__ import annotations

import logging
from urllib.parse import unquote, urlsplit

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SECRET_QUERY_KEYS = frozenset({"token", "sig"})
LOCKED_DOWN_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
COMMON_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "content-security-policy": LOCKED_DOWN_CSP,
}


def redact_query(target: str) -> str:
    """A request target with the value of every secret query parameter replaced by `***`."""
    path, separator, query = target.partition("?")
    if not separator:
        return target
    parts = []
    for part in query.split("&"):
        key, _, _ = part.partition("=")
        # As parse_qsl decodes a key: '+' is a space, then percent-decoding as UTF-8.
        if unquote(key.replace("+", " "), errors="replace") in SECRET_QUERY_KEYS:
            part = f"{key}=***"
        parts.append(part)
    return f"{path}?{'&'.join(parts)}"


class RedactSecrets(logging.Filter):
    """For uvicorn's access log, whose arguments include the request target with its query."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_query(a) if isinstance(a, str) else a for a in record.args)
        return True


def install_log_redaction() -> None:
    logging.getLogger("uvicorn.access").addFilter(RedactSecrets())


def page_csp(nonce: str, link_origins: list[str]) -> str:
    """The job page's policy: its own inline script and style (by nonce), requests to this server, and
    images and videos from here or where links point (a public URL, Supabase Storage)."""
    media = " ".join(["'self'", *sorted(set(link_origins))])
    return (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; "
        f"img-src {media}; media-src {media}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def origin(url: str | None) -> list[str]:
    if not url:
        return []
    parts = urlsplit(url)
    return [f"{parts.scheme}://{parts.netloc}"] if parts.scheme and parts.netloc else []


class SecurityHeaders:
    """ASGI middleware (not BaseHTTPMiddleware, which buffers badly with event streams): sets the common
    headers a route did not set itself. Media objects may be cached privately; nothing else is stored."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cache = "private" if scope["path"].startswith("/media/") else "no-store"

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in {**COMMON_HEADERS, "cache-control": cache}.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, with_headers)
