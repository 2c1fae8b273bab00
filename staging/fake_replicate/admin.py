"""Control routes under /_fake (no token: a local test double): read what happened, script faults, change
settings, and add or replace the models served."""

from __future__ import annotations

from typing import Any

import pydantic
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from staging.fake_replicate.answers import ApiError, found, read_json, read_json_object
from staging.fake_replicate.faults import Fault
from staging.fake_replicate.openapi import model_json
from staging.fake_replicate.schemas import SchemaFileError, read_schema
from staging.fake_replicate.state import FakeState


def add_admin_routes(app: FastAPI, state: FakeState) -> None:
    @app.get("/_fake/state")
    async def read_state() -> dict[str, Any]:
        return state.snapshot()

    @app.get("/_fake/timeline")
    async def read_timeline() -> list[dict[str, Any]]:
        """Predictions created and ended, and downloads of their outputs started and finished, in order."""
        return [event.as_json() for event in state.timeline.events()]

    @app.get("/_fake/predictions/{prediction_id}")
    async def read_prediction(prediction_id: str) -> dict[str, Any]:
        return found(state.record(prediction_id))

    @app.get("/_fake/faults")
    async def read_faults() -> list[dict[str, Any]]:
        return [fault.model_dump() for fault in state.faults.pending()]

    @app.post("/_fake/faults")
    async def add_faults(request: Request) -> list[dict[str, Any]]:
        raw = await read_json(request)
        try:
            faults = [Fault.model_validate(item) for item in (raw if isinstance(raw, list) else [raw])]
        except pydantic.ValidationError as exc:
            raise ApiError(422, str(exc), "Invalid fault") from exc
        state.faults.add(*faults)
        return await read_faults()

    @app.delete("/_fake/faults")
    async def clear_faults() -> list[dict[str, Any]]:
        state.faults.clear()
        return []

    @app.post("/_fake/reset")
    async def reset() -> dict[str, Any]:
        await run_in_threadpool(state.reset)
        return state.snapshot()

    @app.patch("/_fake/config")
    async def configure(request: Request) -> dict[str, Any]:
        raw = await read_json_object(request)
        if "page_size" in raw:
            if not isinstance(raw["page_size"], int) or raw["page_size"] < 1:
                raise ApiError(422, "page_size must be a positive integer")
            state.page_size = raw["page_size"]
        for key in ("latency_s", "expire_after_s"):
            value = raw.get(key, getattr(state, key))
            if not (value is None and key == "expire_after_s") and not _non_negative(value):
                raise ApiError(422, f"{key} must be a non-negative number")
            setattr(state, key, value)
        return {
            "latency_s": state.latency_s,
            "expire_after_s": state.expire_after_s,
            "page_size": state.page_size,
        }

    @app.get("/_fake/schemas")
    async def read_schemas() -> list[str]:
        return sorted(schema.model for schema in state.schemas.all())

    @app.post("/_fake/schemas")
    async def add_schema(request: Request) -> JSONResponse:
        """One schema in the file format: adds a model, or replaces the one of the same name (201 / 200);
        answers the model as GET /v1/models/{owner}/{name} will."""
        try:
            schema = read_schema(await read_json(request))
        except SchemaFileError as exc:
            raise ApiError(422, str(exc), "Invalid schema") from exc
        replaced = state.schemas.add(schema)
        return JSONResponse(model_json(schema), 200 if replaced else 201)

    @app.delete("/_fake/schemas")
    async def restore_schemas() -> list[str]:
        """Back to the schemas the fake started with (built-ins and --schemas DIR)."""
        state.schemas.restore()
        return await read_schemas()


def _non_negative(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
