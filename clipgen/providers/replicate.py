"""Clips from Replicate with the official client: create once, wait against a deadline, download promptly.

The money is not decided here: every step is reported to the clip's `PaidWork` (clipgen.paid_work), which
says what to adopt and whether a create may be sent, and records what each prediction cost and how it ended.
What this module keeps:
- a prediction is created only after its inputs are built and checked, and only once the ledger has the
  intent; its id goes to the ledger before any waiting;
- a prediction the ledger names (in flight, or succeeded and not stored) is re-attached to, or its output
  downloaded again, instead of paying for another;
- a create whose answer was lost (a 5xx, a connection reset, a process that died) is looked for among the
  account's recent predictions before anything new is paid for; while that list cannot be read, nothing is
  created (LostCreateUnresolved, a transient error);
- past the clip's deadline the prediction is canceled (through the ledger) before the attempt gives up;
- a 429 on create made nothing: it waits for the reset hint and tries again, within a bound; the wait is
  shared by the run's clips, and fewer predictions run at once until creates succeed again
  (`clipgen.throttle`).

Retries here (the budgets are in tasks/__init__.py): an output's download is tried again in place
(clipgen.retrying); a create answered 429 waits for the reset hint and is sent again (`_create`). Any other
failure ends the attempt with a typed error (clipgen.errors) for the clip task to retry or not. A failed
prediction's error is only text: `prediction_error` turns it into a type, here at the edge, and nothing
after reads the text again.

Replicate's answers are read by clipgen/providers/replicate_api.py: predictions as plain JSON, failures as
typed errors.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import httpx
from replicate.client import Client
from replicate.exceptions import ReplicateError

from clipgen.errors import (
    ConfigurationError,
    GenerationError,
    HintTooLong,
    LostCreateUnresolved,
    NotFound,
    OutputGone,
    TransientError,
)
from clipgen.files import atomic_write
from clipgen.model_inputs import PLACEHOLDER_URI, ModelRequest, build_request
from clipgen.model_schema import InputSchema
from clipgen.planning import ClipPlan
from clipgen.polling import LatencyHistory, next_poll_delay
from clipgen.providers.base import Generation, Intent, PaidWork, RemoteStatus
from clipgen.providers.replicate_api import (
    LIVE,
    TERMINAL,
    PredictionPage,
    RemotePrediction,
    api_error,
    api_time,
    ended_status,
    error_text,
    output_url,
    prediction_error,
    rate_limit_delay,
    same_input,
    typed,
)
from clipgen.providers.replicate_images import ReferenceUploads
from clipgen.retrying import retried
from clipgen.settings import Settings
from clipgen.throttle import AdaptiveLimit, Slot

log = logging.getLogger(__name__)
T = TypeVar("T")

DOWNLOAD_ATTEMPTS = 3
# How far our clock and Replicate's may disagree when matching a prediction to the create that made it.
CLOCK_SKEW = timedelta(seconds=30)
# How long after its intent went on the ledger a create can reach Replicate (the intent's write, then the
# request itself): a prediction made later than that with the same input is another create's.
CREATE_WINDOW = timedelta(minutes=10)
# How far back (in pages of the prediction list, newest first) to look for the prediction a lost create made.
LOST_CREATE_PAGES = 5


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
        self._images = ReferenceUploads(client)
        self._latencies = LatencyHistory()
        self._latency_lock = threading.Lock()
        self._latencies_read = False

    def close(self) -> None:
        self._downloads.close()
        if self._api_transport is not None:
            self._api_transport.close()

    @classmethod
    def from_settings(cls, settings: Settings) -> ReplicateProvider:
        if settings.replicate_api_token is None:
            raise ConfigurationError("REPLICATE_API_TOKEN is not set; the replicate provider needs it")
        transport = httpx.HTTPTransport()
        client = Client(
            api_token=settings.replicate_api_token.get_secret_value(),
            base_url=settings.replicate_base_url,
            transport=transport,
        )
        return cls(client, poll_interval_s=settings.replicate_poll_interval_seconds, api_transport=transport)

    def generate(self, plan: ClipPlan, dest: Path, work: PaidWork) -> Generation:
        request: ModelRequest | None = None
        while True:
            prediction, fresh, request = self._ended_prediction(plan, work, request)
            try:
                self._download(output_url(prediction), dest)
            except OutputGone:
                work.ended(prediction.id, "gone")
                if fresh:
                    raise
                log.warning("output of %s is gone; creating a new prediction", prediction.id)
                continue
            break
        notes = (request or build_request(plan, _no_upload)).notes
        return Generation(
            prediction_id=prediction.id,
            metadata={
                "provider": self.name,
                "replicate_model": prediction.model,
                "predict_time": (prediction.metrics or {}).get("predict_time"),
                **notes,
            },
        )

    def _ended_prediction(
        self, plan: ClipPlan, work: PaidWork, request: ModelRequest | None
    ) -> tuple[RemotePrediction, bool, ModelRequest | None]:
        """The clip's prediction once it has succeeded: one the ledger names, or one followed to its end; and
        whether this attempt created it. Only a prediction in flight holds a slot (`work.in_flight`): taken
        right before the create (its input, images included, is ready by then) or before following one still
        running, and given back when it ends, before its output is downloaded."""
        self._learn_latencies()
        prediction = self._adopt(work) or self._recover(plan, work)
        if prediction is not None and prediction.status == "succeeded":  # ended: only a download away
            return self._wait(prediction, plan.timeout_s, work, fresh=False), False, request
        if prediction is None:
            request = request or build_request(plan, self._images.uri)
        # The throttle's slot counts this prediction until it ends; it is fewer than the run's after 429s.
        with work.in_flight(), self.throttle.slot() as slot:
            fresh = prediction is None
            if prediction is None:
                assert request is not None
                prediction = self._create(request, work, slot)
            return self._wait(prediction, plan.timeout_s, work, fresh), fresh, request

    def model_schema(self, model: str) -> InputSchema:
        """The model's latest published input schema (`GET /v1/models/{owner}/{name}`), read as plain JSON.
        A read that may pass (429, 5xx, no answer) is tried again in place: no run has started yet."""
        body = retried(
            f"reading {model}'s schema",
            lambda: self._call("GET", f"/v1/models/{model}"),
            retry_on=lambda exc: isinstance(exc, TransientError),
        )
        return InputSchema.from_model_response(body)

    def cancel(self, prediction_id: str) -> RemoteStatus | None:
        """Cancel a prediction we no longer want (a no-op on Replicate's side for one that has ended)."""
        answer = self._call("POST", f"/v1/predictions/{prediction_id}/cancel")
        status = RemotePrediction.model_validate(answer).status
        return status if status in TERMINAL else "canceled"  # type: ignore[return-value]

    # --- the prediction's lifecycle -------------------------------------------------------------------

    def _adopt(self, work: PaidWork) -> RemotePrediction | None:
        """The first prediction the ledger names for this plan that can still deliver. One that cannot is
        reported as ended; one that cannot be read now fails the attempt (transient, or permanent when the API
        refuses us, as with a wrong token): creating another while it may be running would pay twice."""
        for prediction_id in work.adoptable():
            try:
                prediction = self._get(prediction_id)
            except NotFound:
                work.ended(prediction_id, "gone")  # unknown to the API: nothing to re-attach to
                continue
            if prediction.status in LIVE or prediction.status == "succeeded":
                log.info("re-attaching to prediction %s (%s)", prediction.id, prediction.status)
                return prediction
            work.ended(prediction.id, ended_status(prediction.status), error_text(prediction))
        return None

    def _recover(self, plan: ClipPlan, work: PaidWork) -> RemotePrediction | None:
        """What the creates whose answer was never recorded made: each found one goes on the ledger and the
        bill, and the first that can still deliver is adopted; a create that made nothing frees its
        reservation. Raises LostCreateUnresolved while the list cannot be read."""
        lost = work.lost_creates()
        if not lost:
            return None
        request = build_request(plan, self._images.uri)
        adopted: RemotePrediction | None = None
        for intent in lost:
            made = self._made_by(request, intent)
            if made is None:
                work.made_nothing(intent.id)
                continue
            work.found(intent.id, made.id)
            if made.status in TERMINAL and made.status != "succeeded":
                work.ended(made.id, ended_status(made.status), error_text(made))
            elif adopted is None:
                adopted = made
        return adopted

    def _create(self, request: ModelRequest, work: PaidWork, slot: Slot) -> RemotePrediction:
        """Create once, under an intent on the ledger. A 429 (or any 4xx) made nothing: the intent is void.
        After a 429 the throttle holds every create of the run until the reset hint and lowers the limit,
        and the create is tried again, as long as its waits stay within `max_rate_limit_wait_s`."""
        detail = "creates are paused after a 429"
        while True:
            try:
                slot.ready(self._max_rate_limit_wait_s)
            except HintTooLong as exc:
                raise TransientError(f"rate limited by Replicate: {detail}", retry_after=exc.wait_s) from None
            intent = work.intend()
            try:
                prediction = self._send(request)
            except ReplicateError as exc:
                if exc.status is not None and exc.status < 500:
                    work.made_nothing(intent.id)  # the API refused it: nothing exists
                    if exc.status == 429:
                        delay = rate_limit_delay(exc)
                        slot.throttled(delay)
                        detail = exc.detail or detail
                        log.warning("rate limited on create; the run's creates wait %.1f s", delay)
                        continue
                    slot.failed()
                    raise api_error(exc) from exc
                return self._after_lost_answer(request, intent, work, slot, api_error(exc))
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                work.made_nothing(intent.id)  # never reached the API
                slot.failed()
                raise TransientError(f"Replicate API unreachable: {exc!r}") from exc
            except httpx.TransportError as exc:
                lost = TransientError(f"the answer to a create was lost: {exc!r}")
                return self._after_lost_answer(request, intent, work, slot, lost)
            except ValueError as exc:
                # Answered 2xx with something that is not a prediction (a proxy's page): it may have made one.
                lost = TransientError(f"the answer to a create cannot be read: {exc}")
                return self._after_lost_answer(request, intent, work, slot, lost)
            slot.succeeded()
            work.created(intent.id, prediction.id)
            return prediction

    def _after_lost_answer(
        self, request: ModelRequest, intent: Intent, work: PaidWork, slot: Slot, error: GenerationError
    ) -> RemotePrediction:
        """A create sent and not answered (5xx, reset) may have made a prediction: find out before anything
        else is paid for. While the list cannot be read the intent stays, for the next attempt."""
        try:
            made = self._made_by(request, intent)
        except LostCreateUnresolved:
            slot.failed()
            raise
        if made is None:
            work.made_nothing(intent.id)
            slot.failed()
            raise error
        work.found(intent.id, made.id)
        slot.succeeded()
        return made

    def _made_by(self, request: ModelRequest, intent: Intent) -> RemotePrediction | None:
        """The prediction the create of `intent` made, or None when it made none.

        Replicate has no idempotency key, and creating again could pay twice. So look among the predictions
        made while the create can have reached the API (from when it was sent to CREATE_WINDOW later; newest
        first, a few pages back) for one with our input that no one has on record, and adopt it. Two such
        (clips with the same input) cannot be told apart: neither is taken, and the intent is settled as
        having made nothing we can own.
        """
        since = intent.sent_at - CLOCK_SKEW
        recent = self._predictions_between(since, intent.sent_at + CREATE_WINDOW + CLOCK_SKEW)
        matches = [
            p
            for p in recent
            if p.id not in intent.known
            and same_input(p.input, request.input)
            and (p.version == request.version if request.version else p.model == request.model)
        ]
        if len(matches) > 1:
            log.warning("%d predictions match a lost create; adopting none of them", len(matches))
        return matches[0] if len(matches) == 1 else None

    def _predictions_between(self, since: datetime, until: datetime) -> list[RemotePrediction]:
        """The account's predictions created from `since` to `until`. LostCreateUnresolved when the list
        cannot be read, or `since` lies further back than LOST_CREATE_PAGES pages: we cannot tell what was
        made.

        The window is asked of the API too (`created_after`, `created_before`), so a lookup long after the
        create (a rerun the next day) pages through that window, not through every prediction made since.
        Every page is filtered here as well: the window is only a hint to the API."""
        found: list[RemotePrediction] = []
        url = "/v1/predictions?" + urlencode(
            {"created_after": api_time(since), "created_before": api_time(until)}
        )
        for _ in range(LOST_CREATE_PAGES):
            try:
                page = PredictionPage.model_validate(self._call("GET", url))
            except (GenerationError, ValueError) as exc:
                raise LostCreateUnresolved(
                    f"cannot tell whether a lost create made a prediction: {exc}"
                ) from exc
            found += [p for p in page.results if since <= p.created() <= until]
            if not page.next or any(p.created() < since for p in page.results):
                return found
            url = page.next  # the client takes `next` as the whole URL to fetch
        raise LostCreateUnresolved(
            f"over {LOST_CREATE_PAGES} pages of predictions since a lost create: cannot tell what it made"
        )

    def _send(self, request: ModelRequest) -> RemotePrediction:
        if request.version:
            path, body = "/v1/predictions", {"version": request.version, "input": request.input}
        else:
            path, body = f"/v1/models/{request.model}/predictions", {"input": request.input}
        response = self._client._request("POST", path, json=body)
        return RemotePrediction.model_validate(response.json())

    def _get(self, prediction_id: str) -> RemotePrediction:
        return RemotePrediction.model_validate(self._call("GET", f"/v1/predictions/{prediction_id}"))

    def _call(self, method: str, path: str) -> Any:
        """One API call through the client (its auth, base URL and transport), the answer as JSON, failures
        typed. The client's own models are not used to read it (see the module's docstring)."""
        return typed(lambda: self._client._request(method, path).json())

    def _wait(
        self, prediction: RemotePrediction, timeout_s: float, work: PaidWork, fresh: bool
    ) -> RemotePrediction:
        """Poll until the prediction ends (clipgen.polling: often near its model's expected end, rarely
        before); past the clip's deadline it is canceled. Raises unless it succeeded."""
        began = time.monotonic() - (0.0 if fresh else _age_s(prediction))
        deadline = time.monotonic() + timeout_s
        expected = self._latencies.expected(prediction.model)
        while prediction.status not in TERMINAL:
            work.check()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                reason = f"prediction {prediction.id} still {prediction.status} after {timeout_s:g} s"
                work.give_up(prediction.id, reason)
                raise TransientError(f"{reason}; canceled it")
            delay = next_poll_delay(time.monotonic() - began, expected, self._poll_interval_s)
            time.sleep(min(delay, remaining))
            prediction = self._get(prediction.id)
        error = error_text(prediction)
        work.ended(prediction.id, ended_status(prediction.status), error)
        if prediction.status == "succeeded":
            self._latencies.add(prediction.model, prediction.latency_s())
            return prediction
        if prediction.status == "failed":
            raise prediction_error(prediction.id, error)
        raise TransientError(f"prediction {prediction.id} was {prediction.status}")

    def _learn_latencies(self) -> None:
        """Once per provider: the models' latencies from the account's latest page of predictions, so a run's
        first predictions are polled by them too. Best effort: without them, polls keep the base interval."""
        with self._latency_lock:
            if self._latencies_read:
                return
            self._latencies_read = True
            try:
                page = PredictionPage.model_validate(self._call("GET", "/v1/predictions"))
            except (GenerationError, ValueError) as exc:
                log.info(
                    "could not read recent predictions' latencies (%s); polling every %g s",
                    exc,
                    self._poll_interval_s,
                )
                return
            for past in page.results:
                if past.status == "succeeded":
                    self._latencies.add(past.model, past.latency_s())

    def _download(self, url: str, dest: Path) -> None:
        """Stream the output to `dest` (atomically), retrying failures in place against the same URL: it is
        free, and the prediction stays paid for either way. OutputGone is not retried."""
        try:
            retried(
                f"download of {url}",
                lambda: _stream_to(self._downloads, url, dest),
                retry_on=lambda exc: isinstance(exc, (httpx.HTTPError, OSError)),
                tries=DOWNLOAD_ATTEMPTS,
                # Even inside a clip attempt: a new attempt would redo it only after a backoff, a lease and a
                # poll, and a paid output lost to a few failed GETs is lost to the run (tasks/__init__.py).
                retry_inside_attempt=True,
            )
        except (httpx.HTTPError, OSError) as exc:
            raise TransientError(f"downloading {url} failed {DOWNLOAD_ATTEMPTS} times: {exc!r}") from exc


def _age_s(prediction: RemotePrediction) -> float:
    """How long ago a prediction we did not create was created (0 when unknown)."""
    try:
        return max(0.0, (datetime.now(UTC) - prediction.created()).total_seconds())
    except ValueError:
        return 0.0


def _no_upload(path: str, aspect_ratio: str, max_size: tuple[int, int]) -> str:
    return PLACEHOLDER_URI  # the request is built for its notes only


def _stream_to(client: httpx.Client, url: str, dest: Path) -> None:
    # atomic_write makes the directory again: another run of the job that ended may have removed the job's
    # (then empty) work directory.
    with atomic_write(dest) as tmp, open(tmp, "wb") as handle, client.stream("GET", url) as response:
        if response.status_code in (404, 410):
            raise OutputGone(f"output {url} is gone (HTTP {response.status_code})")
        response.raise_for_status()
        for chunk in response.iter_bytes(1 << 20):
            handle.write(chunk)
