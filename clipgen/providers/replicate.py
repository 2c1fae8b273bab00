"""Clips from Replicate with the official client: create once, wait against a deadline, download promptly.

Money rules this module keeps:
- a prediction is created only after its inputs are built and checked, and its id is handed to
  `on_created` before any waiting;
- past the clip's deadline the prediction is canceled before the attempt gives up;
- a failed download is retried against the same prediction's output, and a later attempt re-attaches to
  the prediction (`resume`) rather than creating another, unless it failed, was canceled or its output
  is gone;
- a create whose answer never reached the ledger (the process died, or the answer was lost) is looked for
  among the account's recent predictions before another is paid for (`lost_create`, `_made_anyway`);
- a 429 on create (nothing was created) waits for the reset hint and tries again, within a bound; the
  wait is shared by the run's clips, and fewer predictions run at once until creates succeed again
  (`clipgen.throttle`).
"""

from __future__ import annotations

import base64
import functools
import io
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
from PIL import Image
from replicate.client import Client
from replicate.exceptions import ReplicateError
from replicate.pagination import Page
from replicate.prediction import Prediction

from clipgen.catalog import get_model
from clipgen.errors import ContentRejected, GenerationError, PermanentError, TransientError
from clipgen.media import encode_image, fit_image, load_image
from clipgen.model_inputs import ModelRequest, build_request
from clipgen.planning import ClipPlan
from clipgen.providers.base import Generation, LostCreate
from clipgen.settings import Settings
from clipgen.throttle import AdaptiveLimit, HintTooLong, Slot

log = logging.getLogger(__name__)
T = TypeVar("T")

TERMINAL = frozenset({"succeeded", "failed", "canceled", "aborted"})
TRANSIENT_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
INLINE_IMAGE_BYTES = 256 * 1024
DOWNLOAD_ATTEMPTS = 3
CANCEL_ATTEMPTS = 3
# How far our clock and Replicate's may disagree when matching a prediction to the create that made it.
CLOCK_SKEW = timedelta(seconds=30)
# How far back (in pages of the prediction list, newest first) to look for the prediction a lost create made.
LOST_CREATE_PAGES = 5
# Where a Files API upload lives; another process's upload of the same image has another id.
_FILES_PATH = re.compile(r"/v1/files/[^/]+")
_RESET_HINT = re.compile(r"resets in ~?\s*(\d+(?:\.\d+)?)\s*s", re.IGNORECASE)
_CONTENT_MARKERS = ("flagged", "sensitive", "nsfw", "safety", "content policy", "moderation", "e005")
_INPUT_MARKERS = ("invalid input", "validation", "not supported", "unsupported")


class OutputGone(TransientError):
    """The prediction's output was deleted (Replicate keeps API outputs for about an hour)."""


class ReplicateProvider:
    name = "replicate"
    paid = True

    def __init__(
        self,
        client: Client,
        *,
        poll_interval_s: float = 1.0,
        max_rate_limit_wait_s: float = 60.0,
        downloads: httpx.Client | None = None,
        api_transport: httpx.BaseTransport | None = None,
        throttle: AdaptiveLimit | None = None,
    ) -> None:
        """`api_transport` is the transport `client` was built with, if any; it is closed with the provider
        (the replicate client has no close of its own). `throttle` limits the predictions this provider runs
        at once, lowered on 429s; by default one without a ceiling, which recovers to the most the run had."""
        self._client = client
        self.throttle = throttle or AdaptiveLimit(name="Replicate predictions")
        self._api_transport = api_transport
        self._poll_interval_s = poll_interval_s
        self._max_rate_limit_wait_s = max_rate_limit_wait_s
        # Output URLs are signed delivery links: no API token is sent with them.
        self._downloads = downloads or httpx.Client(
            timeout=httpx.Timeout(30.0, connect=10.0), follow_redirects=True
        )
        self._uploaded: dict[tuple[str, str, tuple[int, int]], str] = {}
        self._lock = threading.Lock()
        # Every prediction this provider created or re-attached to: a lost create never adopts one of these.
        self._known: set[str] = set()

    def close(self) -> None:
        self._downloads.close()
        if self._api_transport is not None:
            self._api_transport.close()

    @classmethod
    def from_settings(cls, settings: Settings) -> ReplicateProvider:
        if settings.replicate_api_token is None:
            raise ValueError("REPLICATE_API_TOKEN is not set; the replicate provider needs it")
        transport = httpx.HTTPTransport()
        client = Client(
            api_token=settings.replicate_api_token.get_secret_value(),
            base_url=settings.replicate_base_url,
            transport=transport,
        )
        return cls(client, poll_interval_s=settings.replicate_poll_interval_seconds, api_transport=transport)

    def generate(
        self,
        plan: ClipPlan,
        dest: Path,
        *,
        resume: str | None = None,
        on_created: Callable[[str], None] | None = None,
        before_create: Callable[[], None] | None = None,
        lost_create: LostCreate | None = None,
    ) -> Generation:
        # The slot counts this prediction (re-attached or created) until the clip is delivered or given up.
        with self.throttle.slot() as slot:
            prediction = self._reattach(resume) if resume else None
            if prediction is None and lost_create is not None:
                prediction = self._recover(plan, lost_create, on_created)
            if prediction is not None:
                self._remember(prediction.id)
            request: ModelRequest | None = None
            while True:
                reattached = prediction is not None
                if prediction is None:
                    request = build_request(plan, self._image_uri)
                    if before_create:
                        before_create()  # the job's budget may refuse it
                    prediction = self._create(request, slot)
                    self._remember(prediction.id)
                    if on_created:
                        on_created(prediction.id)
                prediction = self._wait(prediction, plan.timeout_s)
                try:
                    self._download(_output_url(prediction), dest)
                except OutputGone:
                    if not reattached:
                        raise
                    log.warning("output of %s is gone; creating a new prediction", prediction.id)
                    prediction = None
                    continue
                break
        notes = (request or build_request(plan, _no_upload)).notes
        return Generation(
            prediction_id=prediction.id,
            cost=get_model(plan.model).cost(plan.requested_duration),
            metadata={
                "provider": self.name,
                "replicate_model": prediction.model,
                "predict_time": (prediction.metrics or {}).get("predict_time"),
                **notes,
            },
        )

    def cancel(self, prediction_id: str) -> str | None:
        """Cancel a prediction we no longer want (a no-op on Replicate's side for one that has ended)."""
        prediction = _api(lambda: self._client.predictions.cancel(prediction_id))
        return str(prediction.status) if prediction.status in TERMINAL else "canceled"

    # --- the prediction's lifecycle -------------------------------------------------------------------

    def _reattach(self, prediction_id: str) -> Prediction | None:
        try:
            prediction = _api(lambda: self._client.predictions.get(prediction_id))
        except PermanentError:
            return None  # unknown to the API: nothing to re-attach to
        if prediction.status in ("starting", "processing", "succeeded"):
            log.info("re-attaching to prediction %s (%s)", prediction.id, prediction.status)
            return prediction
        return None

    def _recover(
        self, plan: ClipPlan, lost: LostCreate, on_created: Callable[[str], None] | None
    ) -> Prediction | None:
        """The prediction made by a create whose answer an earlier attempt never recorded: reported to
        `on_created` whatever its state (it was paid for), and returned when it can still deliver."""
        request = build_request(plan, self._image_uri)
        made = self._made_anyway(request, lost.sent_at, exclude=lost.known)
        if made is None:
            return None
        self._remember(made.id)
        if on_created:
            on_created(made.id)
        if made.status in ("starting", "processing", "succeeded"):
            return made
        log.info("the lost create's prediction %s is %s; creating another", made.id, made.status)
        return None

    def _create(self, request: ModelRequest, slot: Slot) -> Prediction:
        """Create once. A 429 made nothing: it is recorded with the throttle (which holds every create of
        the run until the reset hint and lowers the limit), and the create is tried again, as long as this
        create's waits for hints stay within `max_rate_limit_wait_s`."""
        detail = "creates are paused after a 429"
        while True:
            try:
                slot.ready(self._max_rate_limit_wait_s)
            except HintTooLong as exc:
                raise TransientError(f"rate limited by Replicate: {detail}", retry_after=exc.wait_s) from None
            sent_at = datetime.now(UTC)
            try:
                prediction = self._send(request)
            except ReplicateError as exc:
                if exc.status != 429:
                    made = self._made_anyway(request, sent_at) if (exc.status or 0) >= 500 else None
                    if made is not None:
                        slot.succeeded()
                        return made
                    slot.failed()
                    raise api_error(exc) from exc
                delay = rate_limit_delay(exc)
                slot.throttled(delay)
                detail = exc.detail or detail
                log.warning("rate limited on create; the run's creates wait %.1f s as the API asks", delay)
                continue
            except httpx.TransportError as exc:
                made = self._made_anyway(request, sent_at)
                if made is not None:
                    slot.succeeded()
                    return made
                slot.failed()
                raise TransientError(f"creating the prediction failed: {exc!r}") from exc
            slot.succeeded()
            return prediction

    def _remember(self, prediction_id: str) -> None:
        with self._lock:
            self._known.add(prediction_id)

    def _made_anyway(
        self, request: ModelRequest, sent_at: datetime, exclude: frozenset[str] = frozenset()
    ) -> Prediction | None:
        """After a create whose answer was lost (connection dropped, 5xx, or the process that sent it died
        before recording it): the prediction it may have made.

        Replicate has no idempotency key, and creating again could pay twice. So look among the predictions
        made since we sent ours (newest first, a few pages back) for one with our input that no one has
        on record (`exclude`, and every prediction this provider knows), and adopt it.
        """
        since = sent_at - CLOCK_SKEW
        try:
            recent = self._predictions_since(since)
        except GenerationError as exc:
            log.warning("could not look for a prediction the lost create may have made: %s", exc)
            return None
        with self._lock:
            known = self._known | exclude
        matches = [
            p
            for p in recent
            if p.id not in known
            and _same_input(p.input, request.input)
            and (p.version == request.version if request.version else p.model == request.model)
        ]
        if len(matches) != 1:
            # None: it made nothing. Several: clips with the same input; guessing could take another's.
            return None
        made = matches[0]
        log.warning("the answer to a create was lost, but it made prediction %s; adopting it", made.id)
        return made

    def _predictions_since(self, since: datetime) -> list[Prediction]:
        """The account's predictions created at `since` or later, as far as LOST_CREATE_PAGES pages go."""
        found: list[Prediction] = []
        cursor: str | None = None
        for _ in range(LOST_CREATE_PAGES):
            page = _api(functools.partial(self._list_predictions, cursor))
            found += [p for p in page.results if _created_at(p) >= since]
            if not page.next or any(_created_at(p) < since for p in page.results):
                break
            cursor = page.next
        return found

    def _list_predictions(self, cursor: str | None) -> Page[Prediction]:
        # The client sends `cursor` as the whole URL to fetch; the first page is asked for without one.
        return self._client.predictions.list(cursor=cursor) if cursor else self._client.predictions.list()

    def _send(self, request: ModelRequest) -> Prediction:
        if request.version:
            return self._client.predictions.create(version=request.version, input=request.input)
        return self._client.models.predictions.create(model=request.model, input=request.input)

    def _wait(self, prediction: Prediction, timeout_s: float) -> Prediction:
        deadline = time.monotonic() + timeout_s
        prediction_id = prediction.id
        while prediction.status not in TERMINAL:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._cancel(prediction.id)
                raise TransientError(
                    f"prediction {prediction.id} still {prediction.status} after {timeout_s:g} s; canceled it"
                )
            time.sleep(min(self._poll_interval_s, remaining))
            prediction = _api(lambda: self._client.predictions.get(prediction_id))
        if prediction.status == "succeeded":
            return prediction
        if prediction.status == "failed":
            raise prediction_error(prediction.id, prediction.error)
        raise TransientError(f"prediction {prediction.id} was {prediction.status}")

    def _cancel(self, prediction_id: str) -> None:
        for attempt in range(1, CANCEL_ATTEMPTS + 1):
            try:
                _api(lambda: self._client.predictions.cancel(prediction_id))
                return
            except TransientError as exc:
                log.warning("cancel of %s failed (attempt %d): %s", prediction_id, attempt, exc)
                time.sleep(0.5 * attempt)
        raise TransientError(f"could not cancel prediction {prediction_id}; the next attempt re-attaches")

    def _download(self, url: str, dest: Path) -> None:
        """Stream the output to `dest` (atomically), retrying failures against the same URL."""
        for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
            try:
                _stream_to(self._downloads, url, dest)
                return
            except OutputGone:
                raise
            except (httpx.HTTPError, OSError) as exc:
                if attempt == DOWNLOAD_ATTEMPTS:
                    raise TransientError(f"downloading {url} failed {attempt} times: {exc!r}") from exc
                log.warning("download of %s failed (attempt %d): %r", url, attempt, exc)
                time.sleep(0.5 * 2 ** (attempt - 1))

    # --- images -------------------------------------------------------------------------------------------

    def _image_uri(self, path: str, aspect_ratio: str, size: tuple[int, int]) -> str:
        """The image cropped to the ratio and sized exactly (SVD rounds other sizes down to multiples of 64,
        changing the shape): inline as a data URI when small, else through the Files API."""
        key = (path, aspect_ratio, size)
        with self._lock:
            if key in self._uploaded:
                return self._uploaded[key]
        fitted = fit_image(load_image(Path(path)), aspect_ratio, "crop").resize(
            size, Image.Resampling.LANCZOS
        )
        data = encode_image(fitted, "JPEG", 90)
        if len(data) <= INLINE_IMAGE_BYTES:
            uri = "data:image/jpeg;base64," + base64.b64encode(data).decode()
        else:
            upload = io.BytesIO(data)
            file = _api(
                lambda: self._client.files.create(upload, filename="reference.jpg", content_type="image/jpeg")
            )
            uri = file.urls["get"]
        with self._lock:
            self._uploaded[key] = uri
        return uri


def _no_upload(path: str, aspect_ratio: str, max_size: tuple[int, int]) -> str:
    return ""


def _stream_to(client: httpx.Client, url: str, dest: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle, client.stream("GET", url) as response:
            if response.status_code in (404, 410):
                raise OutputGone(f"output {url} is gone (HTTP {response.status_code})")
            response.raise_for_status()
            for chunk in response.iter_bytes(1 << 20):
                handle.write(chunk)
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _created_at(prediction: Prediction) -> datetime:
    created = datetime.fromisoformat(str(prediction.created_at).replace("Z", "+00:00"))
    return created if created.tzinfo else created.replace(tzinfo=UTC)


def _same_input(theirs: dict[str, Any] | None, ours: dict[str, Any]) -> bool:
    """Equal inputs, where two Files API links count as the same image: another process uploads it anew."""
    if theirs is None or theirs.keys() != ours.keys():
        return False
    return all(
        a == b
        or (isinstance(a, str) and isinstance(b, str) and _FILES_PATH.search(a) and _FILES_PATH.search(b))
        for a, b in ((theirs[key], ours[key]) for key in ours)
    )


def _output_url(prediction: Prediction) -> str:
    output: Any = prediction.output
    if isinstance(output, list) and output:
        output = output[0]
    if output is None:
        # Succeeded, and the output has since been removed (data_removed): it cannot be had any more.
        raise OutputGone(f"prediction {prediction.id} succeeded but its output was removed")
    if not isinstance(output, str) or not output.startswith(("http://", "https://")):
        raise TransientError(f"prediction {prediction.id} succeeded without a video URL: {output!r}")
    return output


def _api(call: Callable[[], T]) -> T:
    """One API call, its failures typed."""
    try:
        return call()
    except ReplicateError as exc:
        raise api_error(exc) from exc
    except httpx.TransportError as exc:
        raise TransientError(f"Replicate API unreachable: {exc!r}") from exc
    except ValueError as exc:
        # The client's models refuse what they do not know, e.g. status "aborted" (1.0.7): ask again later.
        raise TransientError(f"Replicate answered something the client cannot read: {exc}") from exc


def api_error(exc: ReplicateError) -> GenerationError:
    """429, 5xx and unknown statuses may pass; 4xx (invalid input, auth, not found) will not."""
    message = f"Replicate API {exc.status}: {exc.detail or exc.title or 'no detail'}"
    if exc.status is None or exc.status in TRANSIENT_STATUS or exc.status >= 500:
        return TransientError(message, retry_after=rate_limit_delay(exc) if exc.status == 429 else None)
    return PermanentError(message)


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
