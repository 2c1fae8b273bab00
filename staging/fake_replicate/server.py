"""Running the fake: in a background thread for tests (`FakeReplicateServer`), or in the foreground for
offline staging (`serve`, behind `video-generator fake-replicate`)."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn

from staging.fake_replicate.app import create_app
from staging.fake_replicate.counters import CreateRequest
from staging.fake_replicate.faults import Fault
from staging.fake_replicate.openapi import model_json
from staging.fake_replicate.renders import RenderCache
from staging.fake_replicate.schemas import ModelSchema, read_schema
from staging.fake_replicate.state import FakeState
from staging.fake_replicate.timeline import FakeEvent
from staging.serving import ResettableH11Protocol, ServerThread

__all__ = ["CreateRequest", "FakeEvent", "FakeReplicateServer", "Fault", "serve"]


def _config(state: FakeState, **options: Any) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(state),
        http=ResettableH11Protocol,  # for the connection_reset fault
        lifespan="off",
        ws="none",
        timeout_graceful_shutdown=2,
        **options,
    )


class FakeReplicateServer:
    """The fake Replicate API on a real socket, served from a daemon thread.

        with FakeReplicateServer(token="t", latency_s=0.05) as fake:
            client = replicate.Client(api_token="t", base_url=fake.base_url)
            fake.add_fault(Fault(kind="rate_limit", match="storm"))
            ...
            assert fake.creates == 1 and fake.max_in_flight <= 5

    `token=None` accepts any token (one must still be sent). `port=0` picks a free port. `schemas_dir`
    holds extra model schemas in the file format of `clipgen/model_schemas/` (one with the `model` of a
    built-in one replaces it); `add_schema` adds or replaces one while running.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        latency_s: float = 0.2,
        port: int = 0,
        host: str = "127.0.0.1",
        expire_after_s: float | None = None,
        cache: RenderCache | None = None,
        schemas_dir: str | Path | None = None,
    ) -> None:
        self.host, self.port = host, port
        self._schemas_dir = Path(schemas_dir) if schemas_dir is not None else None
        self._token, self._latency_s, self._cache = token, latency_s, cache
        self._expire_after_s = expire_after_s
        self._state: FakeState | None = None
        self._server: ServerThread | None = None

    def __enter__(self) -> FakeReplicateServer:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("already started")
        state = FakeState(
            token=self._token, latency_s=self._latency_s, cache=self._cache, schemas_dir=self._schemas_dir
        )
        state.expire_after_s = self._expire_after_s
        self._state = state
        self._server = ServerThread(create_app(state), host=self.host, port=self.port, name="fake-replicate")
        try:
            self._server.start()
        except RuntimeError:
            state.close()
            self._state = self._server = None
            raise
        self.port = self._server.port

    def stop(self) -> None:
        """Stop serving, wake and join every prediction worker, remove the rendered files."""
        if self._server is not None:
            self._server.stop()
        if self._state is not None:
            self._state.close()
        self._server = self._state = None

    # --- the Python API -----------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """Where to point the client (`base_url=` or REPLICATE_BASE_URL); paths start with /v1."""
        return f"http://{self.host}:{self.port}"

    @property
    def state(self) -> FakeState:
        if self._state is None:
            raise RuntimeError("the fake Replicate server is not running")
        return self._state

    def add_schema(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Serve a model from a schema in the file format (as POST /_fake/schemas does); returns the model
        as GET /v1/models/{owner}/{name} now answers it."""
        schema: ModelSchema = read_schema(raw)
        self.state.schemas.add(schema)
        return model_json(schema)

    def restore_schemas(self) -> None:
        """Serve the schemas the server started with again (built-ins and `schemas_dir`)."""
        self.state.schemas.restore()

    def add_fault(self, *faults: Fault) -> None:
        self.state.faults.add(*faults)

    def clear_faults(self) -> None:
        self.state.faults.clear()

    @property
    def faults(self) -> list[Fault]:
        """Faults that can still fire, with the `times` they have left."""
        return self.state.faults.pending()

    @property
    def predictions(self) -> list[dict[str, Any]]:
        """Every prediction in creation order, as the API shows it plus billed, canceled, cancel_requests,
        downloads and faults (the kinds that applied)."""
        return list(self.state.snapshot()["predictions"])

    def prediction(self, prediction_id: str) -> dict[str, Any]:
        record = self.state.record(prediction_id)
        if record is None:
            raise KeyError(f"no prediction {prediction_id!r}")
        return record

    @property
    def creates(self) -> int:
        """Predictions actually created (rejected creates are not counted)."""
        return self.state.counts.creates

    @property
    def billed(self) -> int:
        """Predictions that started running, which Replicate charges for (even if they then failed or were
        canceled); aborted ones, and ones canceled before they started, are not."""
        return int(self.state.snapshot()["counters"]["billed"])

    @property
    def rejected_creates(self) -> dict[int, int]:
        """Create requests answered with an error and nothing created, by HTTP status."""
        return dict(self.state.counts.rejected)

    @property
    def connection_resets(self) -> int:
        return self.state.counts.connection_resets

    @property
    def cancels(self) -> int:
        """Cancel requests for known predictions (including ones already finished)."""
        return self.state.counts.cancels

    @property
    def uploads(self) -> int:
        return self.state.files.uploads

    @property
    def in_flight(self) -> int:
        return self.state.counts.in_flight

    @property
    def max_in_flight(self) -> int:
        """The most predictions that were starting or processing at the same time."""
        return self.state.counts.max_in_flight

    @property
    def create_requests(self) -> list[CreateRequest]:
        """Every create request in the order answered (the last 10,000), with when it arrived, when it
        was answered (time.monotonic(), this process's clock) and the status it got."""
        return self.state.counts.create_log()

    @property
    def in_flight_series(self) -> list[tuple[float, int]]:
        """(time.monotonic(), predictions in flight) after every change since the start or reset."""
        return self.state.counts.in_flight_history()

    @property
    def timeline(self) -> list[FakeEvent]:
        """What happened to predictions, oldest first (the last 10,000 events): each created and ended,
        each download of its output started and finished, with the predictions in flight just after. Read
        the order, e.g. whether one clip's prediction was created while another's output was downloading."""
        return self.state.timeline.events()

    @property
    def latency_s(self) -> float:
        return self.state.latency_s

    @latency_s.setter
    def latency_s(self, value: float) -> None:
        self.state.latency_s = value

    @property
    def expire_after_s(self) -> float | None:
        return self.state.expire_after_s

    @expire_after_s.setter
    def expire_after_s(self, value: float | None) -> None:
        self.state.expire_after_s = value

    def reset(self) -> None:
        """Forget predictions, files, faults and counters; restore the schemas it started with."""
        self.state.reset()


def serve(
    host: str,
    port: int,
    *,
    token: str | None,
    latency_s: float,
    expire_after_s: float | None = None,
    schemas_dir: Path | None = None,
) -> None:
    """Serve the fake in the foreground until Ctrl-C or SIGTERM, then return normally. A bad schema file in
    `schemas_dir` raises SchemaFileError before anything is served."""
    state = FakeState(
        token=token, latency_s=latency_s, expire_after_s=expire_after_s, schemas_dir=schemas_dir
    )
    try:
        uvicorn.Server(_config(state, host=host, port=port, log_level="info")).run()
    except KeyboardInterrupt:
        # uvicorn shuts down gracefully on SIGINT, then re-raises it; stopping is the normal way out here.
        pass
    finally:
        state.close()
