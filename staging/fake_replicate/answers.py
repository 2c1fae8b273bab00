"""How the fake answers errors (Replicate's problem+json shape) and reads request bodies."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from staging.fake_replicate.validation import InvalidField, problem_detail

PROBLEM = "application/problem+json"
NOT_FOUND = "The requested resource could not be found."


class ApiError(Exception):
    def __init__(self, status: int, detail: str, title: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.detail, self.title = status, detail, title
        self.headers: dict[str, str] = extra.pop("headers", {})
        self.extra = extra

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"detail": self.detail, "status": self.status}
        if self.title:
            body["title"] = self.title
        return JSONResponse(body | self.extra, self.status, headers=self.headers, media_type=PROBLEM)


def invalid(problems: list[InvalidField]) -> ApiError:
    return ApiError(
        422,
        problem_detail(problems),
        "Input validation failed",
        invalid_fields=[problem.as_json() for problem in problems],
    )


def found(value: dict[str, Any] | None) -> dict[str, Any]:
    if value is None:
        raise ApiError(404, NOT_FOUND)
    return value


async def read_json(request: Request) -> Any:
    try:
        return json.loads(await request.body() or b"null")
    except ValueError as exc:
        raise ApiError(400, f"Request body is not valid JSON: {exc}", "Bad request") from exc


async def read_json_object(request: Request) -> dict[str, Any]:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise invalid([InvalidField("invalid_type", "", "Invalid type. Expected: object")])
    return body
