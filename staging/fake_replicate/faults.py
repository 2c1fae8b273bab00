"""Scripted faults: what goes wrong, for which creates, how many times."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

FaultKind = Literal[
    "latency",
    "rate_limit",
    "server_error",
    "connection_reset",
    "reset_after_create",
    "fail",
    "hang",
    "short",
    "corrupt",
    "expired",
    "download_error",
    "slow_download",
    "list_error",
    "model_error",
    "abort",
]
# These answer the create request itself, so nothing is created; DOWNLOAD_FAULTS answer an output
# download; LIST_FAULTS answer GET /v1/predictions; MODEL_FAULTS answer GET /v1/models/...; the others shape
# the prediction. `times` counts creates, downloads, list requests, model reads, or predictions accordingly.
CREATE_FAULTS: frozenset[str] = frozenset(
    {"rate_limit", "server_error", "connection_reset", "reset_after_create"}
)
DOWNLOAD_FAULTS: frozenset[str] = frozenset({"download_error", "slow_download"})
LIST_FAULTS: frozenset[str] = frozenset({"list_error"})
MODEL_FAULTS: frozenset[str] = frozenset({"model_error"})
_ANSWERING = CREATE_FAULTS | DOWNLOAD_FAULTS | LIST_FAULTS | MODEL_FAULTS
_SERVER_ERRORS = (500, 502, 503, 504)


class Fault(BaseModel):
    """One scripted fault.

    - rate_limit: the create gets 429 with "resets in ~{seconds}s" and `Retry-After`; nothing is created.
    - server_error: the create gets `status` (500/502/503/504); nothing is created.
    - connection_reset: the create's connection is dropped without an answer; nothing is created.
    - reset_after_create: the prediction is created, then the connection is dropped without an answer.
    - fail: created, then fails with `error`.     - hang: created, stays processing until canceled.
    - short: the output is half as long.          - corrupt: the output is not a decodable video.
    - expired: the output URL answers 404.        - latency: processing takes `seconds`.
    - download_error: a download of the output answers 500 (the next one is fine unless `times` > 1).
    - slow_download: a download of the output is held open for `seconds`, then answered with the whole file
      (status, headers and bytes all come after the wait), as from a slow delivery link. The timeline shows
      the download started when it arrived and finished once its last byte was sent.
    - list_error: `GET /v1/predictions` (the list, any page) answers `status` (500/502/503/504) with a
      problem+json body. It concerns no prediction, so `match` must be None. The replicate client retries
      a GET that gets 503 or 504 by itself (up to 10 attempts, backing off from 0.1 s), so only 500 and 502
      reach the caller at once.
    - model_error: `GET /v1/models/{owner}/{name}` (or one of its versions) answers `status` (500/502/503/
      504); `match` limits it to models whose owner/name contains it. The client retries 503 and 504 by
      itself, as for list_error.
    - abort: created, stays starting for `seconds`, then ends `aborted` without ever running, as on
      Replicate when a prediction's `Cancel-After` deadline passes before it starts: no output, no error,
      no `started_at`, empty metrics, not billed. replicate 1.0.7 cannot parse that status: `get()` of
      it, and `list()` of any page holding it, raise `pydantic.v1.ValidationError`.
    `match` limits the fault to predictions whose input `prompt` contains it; `times` is how often it
    fires (-1: always): creates answered, predictions affected, or (download_error, slow_download,
    list_error) downloads or list requests answered.
    `lasts_s` ends the fault that many seconds after it is added, whatever is left of `times` (a 429 storm:
    `Fault(kind="rate_limit", times=-1, lasts_s=3)` answers every create for 3 s).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: FaultKind
    match: str | None = None
    times: int = Field(1, ge=-1)
    seconds: float = Field(1.0, ge=0)
    status: int = 503
    error: str = "Internal error"
    lasts_s: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _sane(self) -> Fault:
        if self.times == 0:
            raise ValueError("times must be positive, or -1 for always")
        if self.kind in ("server_error", "list_error", "model_error") and self.status not in _SERVER_ERRORS:
            raise ValueError(f"a {self.kind} status must be 500, 502, 503 or 504")
        if self.kind in LIST_FAULTS and self.match is not None:
            raise ValueError(f"{self.kind} answers the list, not a prediction: match must be None")
        return self

    def matches(self, prompt: str) -> bool:
        return self.match is None or self.match in prompt


@dataclass
class _Entry:
    fault: Fault
    left: int  # -1: forever
    until: float  # time.monotonic() when it ends (inf: never)


class FaultBook:
    """The faults still to fire, in the order they were added. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[_Entry] = []

    def add(self, *faults: Fault) -> None:
        now = time.monotonic()
        with self._lock:
            self._entries += [
                _Entry(fault, fault.times, now + fault.lasts_s if fault.lasts_s else float("inf"))
                for fault in faults
            ]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def pending(self) -> list[Fault]:
        """The faults that can still fire, `times` and `lasts_s` set to what is left."""
        with self._lock:
            now = self._expire()
            return [
                entry.fault.model_copy(
                    update={"times": entry.left}
                    | ({"lasts_s": entry.until - now} if entry.fault.lasts_s else {})
                )
                for entry in self._entries
            ]

    def take_create_fault(self, prompt: str) -> Fault | None:
        """The first matching fault that answers the create itself, used up by one."""
        return self._take_first(CREATE_FAULTS, prompt)

    def take_download_fault(self, prompt: str) -> Fault | None:
        """The first matching fault that answers a download of an output, used up by one."""
        return self._take_first(DOWNLOAD_FAULTS, prompt)

    def take_list_fault(self) -> Fault | None:
        """The first fault that answers a list request (GET /v1/predictions), used up by one."""
        return self._take_first(LIST_FAULTS, "")

    def take_model_fault(self, model: str) -> Fault | None:
        """The first fault matching `model` that answers a read of it (GET /v1/models/...), used up by one."""
        return self._take_first(MODEL_FAULTS, model)

    def _take_first(self, kinds: frozenset[str], prompt: str) -> Fault | None:
        with self._lock:
            self._expire()
            for entry in self._entries:
                if entry.fault.kind in kinds and entry.fault.matches(prompt):
                    self._use(entry)
                    return entry.fault
        return None

    def take_prediction_faults(self, prompt: str) -> dict[str, Fault]:
        """For a prediction just created: the first matching fault of each kind that shapes a prediction,
        each used up by one."""
        taken: dict[str, Fault] = {}
        with self._lock:
            self._expire()
            for entry in list(self._entries):
                fault = entry.fault
                if fault.kind not in _ANSWERING and fault.kind not in taken and fault.matches(prompt):
                    taken[fault.kind] = fault
                    self._use(entry)
        return taken

    def _expire(self) -> float:
        """Drop the faults whose time is up (under the lock); returns now."""
        now = time.monotonic()
        self._entries = [entry for entry in self._entries if entry.until > now]
        return now

    def _use(self, entry: _Entry) -> None:
        if entry.left > 0:
            entry.left -= 1
            if entry.left == 0:
                self._entries.remove(entry)
