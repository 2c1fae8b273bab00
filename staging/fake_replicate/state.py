"""Everything the fake remembers: its predictions, counts, timeline, faults, files and schemas.

One lock guards the predictions (a status and the count in flight change together under it); workers
(worker.py, one thread a prediction) hold it only to change a status, through the `Ledger` methods here.
How a prediction is shown is in prediction.py, what is counted in counters.py.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from staging.fake_replicate.counters import HISTORY, Counters
from staging.fake_replicate.downloads import OutputAnswer, answer_output
from staging.fake_replicate.faults import FaultBook
from staging.fake_replicate.files import FileStore, new_id
from staging.fake_replicate.prediction import (
    TERMINAL,
    Prediction,
    api_json,
    billed,
    newest_first_page,
    record_json,
)
from staging.fake_replicate.registry import SchemaBook
from staging.fake_replicate.renders import RenderCache
from staging.fake_replicate.schemas import ModelSchema
from staging.fake_replicate.timeline import EventKind, Timeline
from staging.fake_replicate.worker import Workshop, run_prediction

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
        self.timeline = Timeline(HISTORY)
        self.counts = Counters()
        self._dir = tempfile.TemporaryDirectory(prefix="fake-replicate-")
        root = Path(self._dir.name)
        for folder in ("outputs", "scratch", "files"):
            (root / folder).mkdir()
        self.files = FileStore(root / "files")
        self._workshop = Workshop(self.files, root / "scratch", root / "outputs", cache)
        self._lock = threading.Lock()
        self._predictions: dict[str, Prediction] = {}
        self._threads: set[threading.Thread] = set()
        self._closed = False

    # --- creating (a create request's own counts and log are in `counts`) ----------------------------

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
        prediction = Prediction(new_id(), schema, values, base_url, faults, latency, cancel_after_s)
        name = f"fake-replicate-{prediction.id}"
        worker = threading.Thread(target=self._run, args=(prediction,), name=name)
        with self._lock:
            if self._closed:
                raise RuntimeError("the fake Replicate server is shutting down")
            self._predictions[prediction.id] = prediction
            self.counts.created()
            self._note_locked("created", prediction)
            self._threads.add(worker)
            # Started under the lock so that close() never sees a thread it cannot join yet.
            worker.start()
            return self._api_json(prediction)

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
        """One page of predictions as `prediction.newest_first_page` picks it, as the API shows them."""
        with self._lock:
            predictions = list(self._predictions.values())
            page, last = newest_first_page(predictions, self.page_size, after, created_after, created_before)
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
            self.counts.canceled()
            if prediction.status not in TERMINAL:
                prediction.canceled = True
                self._finish_locked(prediction, "canceled")
            return self._api_json(prediction)

    def open_output(self, prediction_id: str, *, count: bool = True) -> OutputAnswer:
        """How to answer one request for an output. A GET (`count`) is a download: counted, and started on
        the timeline; one answered with an error also finished there, one answered with the file is
        finished by `output_sent`."""
        with self._lock:
            prediction = self._predictions.get(prediction_id)
            if prediction is None or prediction.output_path is None:
                return OutputAnswer(404)
            answer = answer_output(prediction, self.faults, self.expire_after_s, download=count)
            if count:
                prediction.downloads += 1
                self._note_locked("download_started", prediction)
                if answer.status != 200:
                    self._note_locked("download_finished", prediction, str(answer.status))
            return answer

    def output_sent(self, prediction_id: str) -> None:
        """A download answered with the file is about to send its last bytes (see app.py's `_Delivery`)."""
        with self._lock:
            prediction = self._predictions.get(prediction_id)
            if prediction is not None:
                self._note_locked("download_finished", prediction, "200")

    def _note_locked(self, kind: EventKind, prediction: Prediction, status: str | None = None) -> None:
        self.timeline.add(kind, prediction.id, prediction.prompt, self.counts.in_flight, status)

    # --- the workers' Ledger ----------------------------------------------------------------------------

    def start_processing(self, prediction: Prediction) -> bool:
        with self._lock:
            if prediction.status != "starting":
                return False
            prediction.status, prediction.started_at = "processing", time.time()
            prediction.logs = f"Running {prediction.schema.model} (fake)\n"
            return True

    def finish(self, prediction: Prediction, status: str, **changes: Any) -> None:
        with self._lock:
            if prediction.status not in TERMINAL:
                self._finish_locked(prediction, status, **changes)

    def pass_deadline(self, prediction: Prediction) -> None:
        with self._lock:
            if prediction.status not in TERMINAL:
                ended = "aborted" if prediction.status == "starting" else "canceled"
                self._finish_locked(prediction, ended)

    def worker_done(self) -> None:
        with self._lock:
            self._threads.discard(threading.current_thread())

    def _run(self, prediction: Prediction) -> None:
        run_prediction(prediction, self, self._workshop)  # here mypy checks that this is a Ledger

    def _finish_locked(self, prediction: Prediction, status: str, **changes: Any) -> None:
        prediction.status, prediction.completed_at = status, time.time()
        prediction.error = changes.get("error")
        prediction.output_path = changes.get("output_path")
        prediction.logs += changes.get("logs", "")
        self.counts.ended()
        self._note_locked("ended", prediction, status)
        prediction.wake.set()

    # --- views ------------------------------------------------------------------------------------------

    def _api_json(self, prediction: Prediction) -> dict[str, Any]:
        return api_json(prediction, self.expire_after_s)

    def record(self, prediction_id: str) -> dict[str, Any] | None:
        """What a test wants to know about one prediction: the API view plus the fake's bookkeeping."""
        with self._lock:
            p = self._predictions.get(prediction_id)
            return None if p is None else record_json(p, self.expire_after_s)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            predictions = list(self._predictions.values())
            records = [record_json(p, self.expire_after_s) for p in predictions]
            counters = self.counts.as_json(
                billed=sum(billed(p) for p in predictions), uploads=self.files.uploads
            )
        return {
            "counters": counters,
            "predictions": records,
            "faults": [fault.model_dump() for fault in self.faults.pending()],
            "config": {"latency_s": self.latency_s, "expire_after_s": self.expire_after_s},
        }

    # --- reset and shutdown -----------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every prediction, file, fault, count and event (running workers are stopped), and serve the
        schemas the fake started with."""
        with self._lock:
            for prediction in self._predictions.values():
                # Ended without touching the counts, which start again from zero.
                if prediction.status not in TERMINAL:
                    prediction.status, prediction.completed_at = "canceled", time.time()
                prediction.wake.set()
            self._predictions.clear()
            self.counts = Counters()
        self.faults.clear()
        self.timeline.clear()
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
