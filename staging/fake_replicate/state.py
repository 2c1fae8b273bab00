"""Everything the fake remembers, and each prediction's life in its own worker thread.

One lock guards all of it; workers hold it only to change a status, never while reading images or
rendering. A prediction's `wake` event interrupts its worker (on cancel, reset or shutdown).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from staging.fake_replicate.faults import Fault, FaultBook
from staging.fake_replicate.files import FileStore, InputImageError, iso, new_id
from staging.fake_replicate.outputs import PlanError, plan_output, scene_fields
from staging.fake_replicate.registry import SchemaBook
from staging.fake_replicate.renders import RenderCache, shared_cache, write_corrupt
from staging.fake_replicate.rules import rule_violation
from staging.fake_replicate.schemas import ModelSchema

log = logging.getLogger(__name__)
TERMINAL = frozenset({"succeeded", "failed", "canceled", "aborted"})
Size = tuple[int, int]
STARTING_SHARE = 0.2  # of the latency spent "starting" (capped at 1 s) before "processing"
HISTORY = 10_000  # create requests and in-flight changes remembered, for measuring clients


@dataclass(frozen=True)
class CreateRequest:
    """One create request as the fake saw it: when it arrived and was answered (time.monotonic(), the
    clock of the process serving the fake) and the status it got (201; 0 for a dropped connection)."""

    arrived: float
    answered: float
    status: int


@dataclass(eq=False)
class _Prediction:
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
    wake: threading.Event = field(default_factory=threading.Event)


LIST_PAGE_SIZE = 100  # predictions per page of GET /v1/predictions, as on Replicate


class FakeState:
    def __init__(
        self,
        *,
        token: str | None = None,
        latency_s: float = 0.2,
        expire_after_s: float | None = None,
        cache: RenderCache | None = None,
        schemas_dir: Path | None = None,
    ) -> None:
        self.token = token
        self.schemas = SchemaBook(schemas_dir)
        self.latency_s = latency_s
        self.expire_after_s = expire_after_s
        self.page_size = LIST_PAGE_SIZE
        self.faults = FaultBook()
        self._cache = cache
        self._dir = tempfile.TemporaryDirectory(prefix="fake-replicate-")
        root = Path(self._dir.name)
        self._outputs, self._scratch = root / "outputs", root / "scratch"
        for folder in (self._outputs, self._scratch, root / "files"):
            folder.mkdir()
        self.files = FileStore(root / "files")
        self._lock = threading.Lock()
        self._predictions: dict[str, _Prediction] = {}
        self._threads: set[threading.Thread] = set()
        self._closed = False
        self._reset_counters()

    def _reset_counters(self) -> None:
        self.creates = self.cancels = self.connection_resets = 0
        self.in_flight = self.max_in_flight = 0
        self.rejected: Counter[int] = Counter()
        self._create_log: deque[CreateRequest] = deque(maxlen=HISTORY)
        self._in_flight_log: deque[tuple[float, int]] = deque([(time.monotonic(), 0)], maxlen=HISTORY)

    # --- creating ---------------------------------------------------------------------------------------

    def create(
        self,
        schema: ModelSchema,
        values: dict[str, Any],
        base_url: str,
        *,
        cancel_after_s: float | None = None,
    ) -> dict[str, Any]:
        """A new prediction (input already validated); its worker starts at once. With `cancel_after_s`
        it ends that long after creation if still running: aborted if it has not started, else canceled."""
        faults = self.faults.take_prediction_faults(str(values.get("prompt", "")))
        latency = faults["latency"].seconds if "latency" in faults else self.latency_s
        prediction = _Prediction(new_id(), schema, values, base_url, faults, latency, cancel_after_s)
        name = f"fake-replicate-{prediction.id}"
        worker = threading.Thread(target=self._run, args=(prediction,), name=name)
        with self._lock:
            if self._closed:
                raise RuntimeError("the fake Replicate server is shutting down")
            self._predictions[prediction.id] = prediction
            self.creates += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self._in_flight_log.append((time.monotonic(), self.in_flight))
            self._threads.add(worker)
            # Started under the lock so that close() never sees a thread it cannot join yet.
            worker.start()
            return self._api_json(prediction)

    def reject(self, status: int) -> None:
        with self._lock:
            self.rejected[status] += 1

    def log_create(self, arrived: float, status: int) -> None:
        """A create request answered (or dropped: status 0) just now."""
        with self._lock:
            self._create_log.append(CreateRequest(arrived, time.monotonic(), status))

    def create_log(self) -> list[CreateRequest]:
        """The create requests answered (the last HISTORY), oldest first."""
        with self._lock:
            return list(self._create_log)

    def in_flight_history(self) -> list[tuple[float, int]]:
        """(time.monotonic(), predictions in flight) after every change since the start or reset."""
        with self._lock:
            return list(self._in_flight_log)

    def record_reset(self) -> None:
        with self._lock:
            self.connection_resets += 1

    # --- reading and canceling --------------------------------------------------------------------------

    def get(self, prediction_id: str) -> dict[str, Any] | None:
        with self._lock:
            prediction = self._predictions.get(prediction_id)
            return None if prediction is None else self._api_json(prediction)

    def list_predictions(
        self,
        after: str | None = None,
        created_after: float | None = None,
        created_before: float | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of predictions, newest first (like the API), and the id the next page starts after.

        `after` is the last id of the previous page: pages hold still while new predictions are made.
        `created_after` / `created_before` (epoch seconds) keep those made in that window, as the API's
        query parameters of the same names do."""
        with self._lock:
            found = sorted(
                (
                    p
                    for p in self._predictions.values()
                    if (created_after is None or p.created_at >= created_after)
                    and (created_before is None or p.created_at <= created_before)
                ),
                key=lambda p: (p.created_at, p.id),
                reverse=True,
            )
            if after is not None:
                ids = [p.id for p in found]
                found = found[ids.index(after) + 1 :] if after in ids else []
            page = found[: self.page_size]
            last = page[-1].id if page and len(found) > self.page_size else None
            return [self._api_json(prediction) for prediction in page], last

    def is_terminal(self, prediction_id: str) -> bool:
        with self._lock:
            prediction = self._predictions.get(prediction_id)
            return prediction is None or prediction.status in TERMINAL

    def cancel(self, prediction_id: str) -> dict[str, Any] | None:
        with self._lock:
            prediction = self._predictions.get(prediction_id)
            if prediction is None:
                return None
            prediction.cancel_requests += 1
            self.cancels += 1
            if prediction.status not in TERMINAL:
                prediction.canceled = True
                self._finish_locked(prediction, "canceled")
            return self._api_json(prediction)

    def open_output(self, prediction_id: str, *, count: bool = True) -> Path | int:
        """The output file to serve for one GET (counted as a download), or the HTTP status to answer."""
        with self._lock:
            prediction = self._predictions.get(prediction_id)
            if prediction is None or prediction.output_path is None:
                return 404
            prediction.downloads += count
            if self._data_removed(prediction):
                return 404
            prompt = str(prediction.input.get("prompt", ""))
            fault = self.faults.take_download_fault(prompt) if count else None
            if fault is not None:
                prediction.faults.setdefault(fault.kind, fault)
                return 500
            return prediction.output_path

    # --- the worker -------------------------------------------------------------------------------------

    def _run(self, prediction: _Prediction) -> None:
        try:
            self._work(prediction)
        except Exception:
            # A bug in the fake fails the prediction rather than leaving it processing forever.
            log.exception("fake prediction %s crashed", prediction.id)
            self._finish(prediction, "failed", error="Internal error in the fake Replicate server")
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _work(self, prediction: _Prediction) -> None:
        if "abort" in prediction.faults:  # never picked up: ends aborted, as when Cancel-After passes first
            if not self._pause(prediction, prediction.faults["abort"].seconds):
                self._finish(prediction, "aborted")
            return
        starting = min(prediction.latency_s * STARTING_SHARE, 1.0)
        if self._pause(prediction, starting):
            return  # canceled, reset, shut down or past its deadline
        with self._lock:
            if prediction.status != "starting":
                return
            prediction.status, prediction.started_at = "processing", time.time()
            prediction.logs = f"Running {prediction.schema.model} (fake)\n"
        ready_at = time.monotonic() + prediction.latency_s - starting
        if "hang" in prediction.faults:
            self._pause(prediction, None)
            return
        try:
            scene, scene_key, size = self._read_images(prediction)
            values = prediction.schema.with_defaults(prediction.input)
            problem = rule_violation(prediction.schema.model, values)
            if problem:
                raise PlanError(problem)
            plan = plan_output(prediction.schema.model, values, size)
        except (InputImageError, PlanError) as exc:
            self._finish(prediction, "failed", error=str(exc))
            return
        if "fail" in prediction.faults:
            if not self._pause(prediction, ready_at - time.monotonic()):
                self._finish(prediction, "failed", error=prediction.faults["fail"].error)
            return
        if "short" in prediction.faults:
            plan = plan.shortened()
        dest = self._outputs / f"{prediction.id}.mp4"
        if "corrupt" in prediction.faults:
            write_corrupt(dest)
        else:
            shutil.copyfile((self._cache or shared_cache()).render(plan, scene, scene_key), dest)
        if not self._pause(prediction, ready_at - time.monotonic()):
            frames = f"{plan.width}x{plan.height}, {plan.frames} frames at {plan.fps} fps"
            self._finish(prediction, "succeeded", output_path=dest, logs=f"Wrote {frames}\n")

    def _pause(self, prediction: _Prediction, seconds: float | None) -> bool:
        """Wait `seconds` (None: until woken); True if the prediction ended meanwhile: canceled, reset,
        shut down, or ended here because its Cancel-After deadline passed (aborted if it had not started,
        canceled if it had, as on Replicate)."""
        seconds = None if seconds is None else max(0.0, seconds)
        if prediction.cancel_after_s is not None:
            left = max(0.0, prediction.created_clock + prediction.cancel_after_s - time.monotonic())
            if seconds is None or left < seconds:
                if not prediction.wake.wait(left):
                    with self._lock:
                        if prediction.status not in TERMINAL:
                            ended = "aborted" if prediction.status == "starting" else "canceled"
                            self._finish_locked(prediction, ended)
                return True
        return prediction.wake.wait(seconds)

    def _read_images(self, prediction: _Prediction) -> tuple[Image.Image | None, str | None, Size | None]:
        """Every image input, fetched and decoded as the model would; returns the scene image (the one
        that sets the output's shape), a digest of it, and its size."""
        images: dict[str, tuple[Image.Image, str]] = {}
        for name in prediction.schema.image_fields():
            value = prediction.input.get(name)
            uris = value if isinstance(value, list) else [value] if isinstance(value, str) else []
            for index, uri in enumerate(uris):
                key = f"{name}.{index}" if isinstance(value, list) else name
                images[key] = self.files.read_image(key, uri, self._scratch)
        scene = next((images[name] for name in scene_fields(prediction.schema) if name in images), None)
        if scene is None:
            return None, None, None
        return scene[0], scene[1], scene[0].size

    def _finish(self, prediction: _Prediction, status: str, **changes: Any) -> None:
        with self._lock:
            if prediction.status not in TERMINAL:
                self._finish_locked(prediction, status, **changes)

    def _finish_locked(self, prediction: _Prediction, status: str, **changes: Any) -> None:
        prediction.status, prediction.completed_at = status, time.time()
        prediction.error = changes.get("error")
        prediction.output_path = changes.get("output_path")
        prediction.logs += changes.get("logs", "")
        self.in_flight -= 1
        self._in_flight_log.append((time.monotonic(), self.in_flight))
        prediction.wake.set()

    # --- views ------------------------------------------------------------------------------------------

    def _data_removed(self, prediction: _Prediction) -> bool:
        if "expired" in prediction.faults:
            return prediction.output_path is not None
        limit, done = self.expire_after_s, prediction.completed_at
        return limit is not None and done is not None and time.time() >= done + limit

    def _api_json(self, p: _Prediction) -> dict[str, Any]:
        """The prediction as Replicate's API shows it."""
        removed = self._data_removed(p)
        output = None
        if p.status == "succeeded" and not (removed and "expired" not in p.faults):
            # After the retention period Replicate answers `output: null`; the `expired` fault instead
            # keeps the URL, as seen by a client that read it just before the file went.
            output = f"{p.base_url}/_fake/outputs/{p.id}.mp4"
        metrics: dict[str, float] = {}
        if p.completed_at is not None and p.status != "aborted":  # Replicate shows an aborted one none
            metrics["total_time"] = round(p.completed_at - p.created_at, 6)
            if p.started_at is not None:
                metrics["predict_time"] = round(p.completed_at - p.started_at, 6)
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
            "metrics": metrics,
        } | ({"deadline": iso(p.created_at + p.cancel_after_s)} if p.cancel_after_s is not None else {})

    def record(self, prediction_id: str) -> dict[str, Any] | None:
        """What a test wants to know about one prediction: the API view plus the fake's bookkeeping."""
        with self._lock:
            p = self._predictions.get(prediction_id)
            return None if p is None else self._record_locked(p)

    def _record_locked(self, p: _Prediction) -> dict[str, Any]:
        return self._api_json(p) | {
            "billed": _billed(p),
            "canceled": p.canceled,
            "cancel_requests": p.cancel_requests,
            "downloads": p.downloads,
            "faults": sorted(p.faults),
        }

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            records = [self._record_locked(p) for p in self._predictions.values()]
            counters = {
                "creates": self.creates,
                "billed": sum(_billed(p) for p in self._predictions.values()),
                "rejected_creates": {str(status): count for status, count in sorted(self.rejected.items())},
                "connection_resets": self.connection_resets,
                "cancels": self.cancels,
                "uploads": self.files.uploads,
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
            }
        return {
            "counters": counters,
            "predictions": records,
            "faults": [fault.model_dump() for fault in self.faults.pending()],
            "config": {"latency_s": self.latency_s, "expire_after_s": self.expire_after_s},
        }

    # --- reset and shutdown -----------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every prediction, file, fault and count (running workers are stopped), and serve the
        schemas the fake started with."""
        with self._lock:
            for prediction in self._predictions.values():
                # Ended without touching the counters, which start again from zero.
                if prediction.status not in TERMINAL:
                    prediction.status, prediction.completed_at = "canceled", time.time()
                prediction.wake.set()
            self._predictions.clear()
            self._reset_counters()
        self.faults.clear()
        self.files.clear()
        self.schemas.restore()

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop every worker, wait for them, remove the files."""
        with self._lock:
            self._closed = True
            for prediction in self._predictions.values():
                prediction.wake.set()
            threads = list(self._threads)
        deadline = time.monotonic() + timeout_s
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._dir.cleanup()


def _billed(p: _Prediction) -> bool:
    """Whether the prediction is charged: once it started running, even if it then failed or was canceled
    (Replicate charges a `Cancel-After` cancel while running, not an abort before the start). The fake
    also counts one canceled while starting as free."""
    return p.started_at is not None
