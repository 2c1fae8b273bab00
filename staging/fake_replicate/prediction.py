"""One prediction as the fake keeps it, and how it is shown: to the API's clients, and to tests (with the
fake's bookkeeping). The views are plain functions of the prediction; the caller holds the fake's lock."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from staging.fake_replicate.faults import Fault
from staging.fake_replicate.files import iso
from staging.fake_replicate.schemas import ModelSchema

TERMINAL = frozenset({"succeeded", "failed", "canceled", "aborted"})


@dataclass(eq=False)
class Prediction:
    id: str
    schema: ModelSchema
    input: dict[str, Any]
    base_url: str
    faults: dict[str, Fault]
    latency_s: float
    cancel_after_s: float | None = None  # the `Cancel-After` header: ends it that long after creation
    created_at: float = field(default_factory=time.time)
    created_clock: float = field(default_factory=time.monotonic)
    status: str = "starting"
    started_at: float | None = None
    completed_at: float | None = None
    error: str | None = None
    logs: str = ""
    output_path: Path | None = None
    canceled: bool = False
    cancel_requests: int = 0
    downloads: int = 0
    wake: threading.Event = field(default_factory=threading.Event)  # interrupts its worker's waits

    @property
    def prompt(self) -> str:
        """The input `prompt`, which fault scripts match and tests tell clips apart by."""
        return str(self.input.get("prompt", ""))


def data_removed(p: Prediction, expire_after_s: float | None) -> bool:
    """Whether the output is gone: `expire_after_s` after the prediction ended, or at once with the
    `expired` fault."""
    if "expired" in p.faults:
        return p.output_path is not None
    done = p.completed_at
    return expire_after_s is not None and done is not None and time.time() >= done + expire_after_s


def api_json(p: Prediction, expire_after_s: float | None) -> dict[str, Any]:
    """The prediction as Replicate's API shows it."""
    removed = data_removed(p, expire_after_s)
    output = None
    if p.status == "succeeded" and not (removed and "expired" not in p.faults):
        # After the retention period Replicate answers `output: null`; the `expired` fault instead
        # keeps the URL, as seen by a client that read it just before the file went.
        output = f"{p.base_url}/_fake/outputs/{p.id}.mp4"
    base, web = f"{p.base_url}/v1/predictions/{p.id}", f"{p.base_url}/_fake/predictions/{p.id}"
    return {
        "id": p.id,
        "model": p.schema.model,
        "version": p.schema.version,
        "input": p.input,
        "output": output,
        "logs": p.logs,
        "error": p.error,
        "status": p.status,
        "source": "api",
        "data_removed": removed,
        "created_at": iso(p.created_at),
        "started_at": iso(p.started_at),
        "completed_at": iso(p.completed_at),
        "urls": {"get": base, "cancel": f"{base}/cancel", "web": web},
        "metrics": _metrics(p),
    } | ({"deadline": iso(p.created_at + p.cancel_after_s)} if p.cancel_after_s is not None else {})


def _metrics(p: Prediction) -> dict[str, float]:
    metrics: dict[str, float] = {}
    if p.completed_at is not None and p.status != "aborted":  # Replicate shows an aborted one none
        metrics["total_time"] = round(p.completed_at - p.created_at, 6)
        if p.started_at is not None:
            metrics["predict_time"] = round(p.completed_at - p.started_at, 6)
    return metrics


def record_json(p: Prediction, expire_after_s: float | None) -> dict[str, Any]:
    """What a test wants to know about one prediction: the API view plus the fake's bookkeeping."""
    return api_json(p, expire_after_s) | {
        "billed": billed(p),
        "canceled": p.canceled,
        "cancel_requests": p.cancel_requests,
        "downloads": p.downloads,
        "faults": sorted(p.faults),
    }


def billed(p: Prediction) -> bool:
    """Whether the prediction is charged: once it started running, even if it then failed or was canceled
    (Replicate charges a `Cancel-After` cancel while running, not an abort before the start). The fake
    also counts one canceled while starting as free."""
    return p.started_at is not None


def newest_first_page(
    predictions: list[Prediction],
    page_size: int,
    after: str | None = None,
    created_after: float | None = None,
    created_before: float | None = None,
) -> tuple[list[Prediction], str | None]:
    """One page of `predictions`, newest first (like the API), and the id the next page starts after.

    `after` is the last id of the previous page: pages hold still while new predictions are made.
    `created_after` / `created_before` (epoch seconds) keep those made in that window, as the API's
    query parameters of the same names do."""
    found = sorted(
        (
            p
            for p in predictions
            if (created_after is None or p.created_at >= created_after)
            and (created_before is None or p.created_at <= created_before)
        ),
        key=lambda p: (p.created_at, p.id),
        reverse=True,
    )
    if after is not None:
        ids = [p.id for p in found]
        found = found[ids.index(after) + 1 :] if after in ids else []
    page = found[:page_size]
    last = page[-1].id if page and len(found) > page_size else None
    return page, last
