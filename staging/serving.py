"""An ASGI app on a real socket, served by uvicorn from a daemon thread (the fakes and the tests use it),
and a way for a response to reset its connection, for connection-reset faults.

ASGI gives an application no way to drop its connection: an exception before the response starts becomes a
500. So the server runs on a subclass of uvicorn's h11 protocol that hands each request's transport to the
application through a context variable, and `DropConnection` aborts that transport with SO_LINGER 0, which
sends a TCP RST: the client sees "connection reset by peer" (httpx.ReadError), as when a proxy dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from contextvars import ContextVar
from types import TracebackType
from typing import Literal

import uvicorn
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

STARTUP_TIMEOUT_S = 15.0
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


class ServerThread:
    """An ASGI app served by uvicorn from a daemon thread on a real socket (`port=0` picks a free one)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        name: str = "asgi-server",
        lifespan: Literal["on", "off"] = "off",
    ) -> None:
        self.host, self.port, self._name = host, port, name
        # ResettableH11Protocol lets a response reset its connection (the fake's `reset=True` faults).
        self._config = uvicorn.Config(
            app,
            http=ResettableH11Protocol,
            lifespan=lifespan,
            ws="none",
            # The test process keeps its logging; uvicorn's errors still reach the root logger.
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> ServerThread:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("already started")
        self._socket = socket.create_server((self.host, self.port))
        self.port = self._socket.getsockname()[1]
        self._server = uvicorn.Server(self._config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name=self._name, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self._name} did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()  # uvicorn closes its own server; this is the listening socket we made
        self._server = self._thread = self._socket = None
