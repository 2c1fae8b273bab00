"""What Replicate's answers mean: predictions read as plain JSON, and failures as typed errors.

This module owns reading Replicate's answers. A status decides an API error; a failed prediction's error is
only text, so its words decide here, at the edge, and nothing after reads the text again. Predictions are
read as plain JSON (`RemotePrediction`): replicate 1.0.7's models refuse the `aborted` status, and one
aborted prediction in a listed page would otherwise hide the whole page.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict
from replicate.exceptions import ReplicateError

from clipgen.errors import (
    ContentRejected,
    GenerationError,
    NotFound,
    OutputGone,
    PermanentError,
    TransientError,
)
from clipgen.providers.base import RemoteStatus

T = TypeVar("T")

LIVE = frozenset({"starting", "processing"})
TERMINAL = frozenset({"succeeded", "failed", "canceled", "aborted"})
# Where a Files API upload lives; another process's upload of the same image has another id.
_FILES_PATH = re.compile(r"/v1/files/[^/]+")

TRANSIENT_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_RESET_HINT = re.compile(r"resets in ~?\s*(\d+(?:\.\d+)?)\s*s", re.IGNORECASE)
# Words Replicate's models use for refused content (E005 is Kling's code) and for input they cannot take.
_CONTENT_MARKERS = ("flagged", "sensitive", "nsfw", "safety", "content policy", "moderation", "e005")
_INPUT_MARKERS = ("invalid input", "validation", "not supported", "unsupported")


def typed(call: Callable[[], T]) -> T:
    """One API call, its failures typed."""
    try:
        return call()
    except ReplicateError as exc:
        raise api_error(exc) from exc
    except httpx.TransportError as exc:
        raise TransientError(f"Replicate API unreachable: {exc!r}") from exc
    except ValueError as exc:
        # Not JSON, or not a prediction (a proxy's error page): ask again later.
        raise TransientError(f"Replicate answered something that cannot be read: {exc}") from exc


def api_error(exc: ReplicateError) -> GenerationError:
    """429, 5xx and unknown statuses may pass; 4xx (invalid input, auth, not found) will not."""
    message = f"Replicate API {exc.status}: {exc.detail or exc.title or 'no detail'}"
    if exc.status is None or exc.status in TRANSIENT_STATUS or exc.status >= 500:
        return TransientError(message, retry_after=rate_limit_delay(exc) if exc.status == 429 else None)
    return NotFound(message) if exc.status == 404 else PermanentError(message)


def prediction_error(prediction_id: str, error: str | None) -> GenerationError:
    """A failed prediction: refused content and invalid input are final; anything else may pass."""
    message = f"prediction {prediction_id} failed: {error or 'no error given'}"
    lowered = message.lower()
    if any(marker in lowered for marker in _CONTENT_MARKERS):
        return ContentRejected(message)
    if any(marker in lowered for marker in _INPUT_MARKERS):
        return PermanentError(message)
    return TransientError(message)


def rate_limit_delay(exc: ReplicateError) -> float:
    """Seconds until the rate limit resets, from the API's hint ("... resets in ~30s."), else 1 s."""
    match = _RESET_HINT.search(exc.detail or "")
    return float(match.group(1)) if match else 1.0


class RemotePrediction(BaseModel):
    """A prediction as the API returns it, whatever its status says (`aborted` included)."""

    model_config = ConfigDict(extra="ignore")

    id: str
    status: str
    model: str | None = None
    version: str | None = None
    input: dict[str, Any] | None = None
    output: Any = None
    error: Any = None
    created_at: str | None = None
    completed_at: str | None = None
    metrics: dict[str, Any] | None = None

    def created(self) -> datetime:
        return _moment(self.created_at)

    def latency_s(self) -> float | None:
        """Seconds from its create to its end on Replicate's clock, once it has ended (None: unknown)."""
        if not self.created_at or not self.completed_at:
            return None
        try:
            return (_moment(self.completed_at) - _moment(self.created_at)).total_seconds()
        except ValueError:
            return None


def _moment(text: str | None) -> datetime:
    moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class PredictionPage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    results: list[RemotePrediction]
    next: str | None = None


def api_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ended_status(status: str) -> RemoteStatus:
    return status if status in TERMINAL else "canceled"  # type: ignore[return-value]


def error_text(prediction: RemotePrediction) -> str | None:
    return None if prediction.error is None else str(prediction.error)


def same_input(theirs: dict[str, Any] | None, ours: dict[str, Any]) -> bool:
    """Equal inputs, where two Files API links count as the same image: another process uploads it anew."""
    if theirs is None or theirs.keys() != ours.keys():
        return False
    return all(
        a == b
        or (isinstance(a, str) and isinstance(b, str) and _FILES_PATH.search(a) and _FILES_PATH.search(b))
        for a, b in ((theirs[key], ours[key]) for key in ours)
    )


def output_url(prediction: RemotePrediction) -> str:
    output: Any = prediction.output
    if isinstance(output, list) and output:
        output = output[0]
    if output is None:
        # Succeeded, and the output has since been removed (data_removed): it cannot be had any more.
        raise OutputGone(f"prediction {prediction.id} succeeded but its output was removed")
    if not isinstance(output, str) or not output.startswith(("http://", "https://")):
        # Nothing to download now or later: as good as gone (abandoned, not adopted again).
        raise OutputGone(f"prediction {prediction.id} succeeded without a video URL: {output!r}")
    return output
