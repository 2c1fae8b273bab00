"""Dropping a request's connection without an answer, for the `connection_reset` fault.

ASGI gives an application no way to drop its connection: an exception before the response starts becomes a
500. So the fake runs on a subclass of uvicorn's h11 protocol that hands each request's transport to the
application through a context variable, and the reset answer aborts that transport with SO_LINGER 0, which
sends a TCP RST: the client sees "connection reset by peer" (httpx.ReadError), as when a proxy dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from contextvars import ContextVar

from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

_TRANSPORT: ContextVar[asyncio.Transport | None] = ContextVar("fake_replicate_transport", default=None)


class ResettableH11Protocol(H11Protocol):
    """uvicorn's h11 protocol; every request it serves can reach its own transport."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        inner = self.app

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            # Runs in the request's own task, so the value is seen by everything that serves this request.
            _TRANSPORT.set(transport)
            await inner(scope, receive, send)

        self.app = app


class DropConnection(Response):
    """A "response" that resets the connection instead of answering."""

    def __init__(self) -> None:
        super().__init__(status_code=500)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        transport = _TRANSPORT.get()
        if transport is None:
            # Not served by ResettableH11Protocol (e.g. an in-process ASGI transport): fail loudly instead.
            raise ConnectionResetError("fake connection reset (the fake runs without its own protocol)")
        sock = transport.get_extra_info("socket")
        # Without SO_LINGER the abort closes with a FIN: httpx.RemoteProtocolError, still no answer.
        with contextlib.suppress(AttributeError, OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        # Wait until uvicorn has seen the connection go, so it does not try to answer on it.
        try:
            async with asyncio.timeout(2):
                while (await receive())["type"] != "http.disconnect":
                    pass
        except TimeoutError:
            pass
