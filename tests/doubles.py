"""Test doubles: real VideoProvider and ClipStore implementations with scripted faults (no patching)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from uuid import uuid4

from clipgen.errors import PermanentError, TransientError
from clipgen.media import render_preview
from clipgen.planning import ClipPlan
from clipgen.providers.base import Generation, PaidWork, RemoteStatus
from clipgen.stores.base import StoredObject
from clipgen.stores.local import LocalStore

OK, TRANSIENT, PERMANENT, SHORT = "ok", "transient", "permanent", "short"


def small_size(width: int, height: int, longest: int = 192) -> tuple[int, int]:
    """The plan's shape at a small size (even sides), so tests render fast."""
    scale = longest / max(width, height)
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


class ScriptedProvider:
    """Renders small real clips; `script[clip_index]` lists the outcome of each attempt (last one repeats).

    Counts calls per clip and the most calls in flight at once. A `paid` one reports each attempt to the
    ledger as one prediction, like a paid provider: intended, created, then ended.
    """

    name = "scripted"

    def __init__(
        self,
        script: dict[int, list[str]] | None = None,
        delay_s: float = 0.0,
        paid: bool = False,
    ) -> None:
        self.paid = paid  # paid generations take a slot of the global prediction limit
        self.script = script or {}
        self.delay_s = delay_s
        self.calls: Counter[int] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.canceled: list[str] = []
        self._lock = threading.Lock()

    def generate(self, plan: ClipPlan, dest: Path, work: PaidWork) -> Generation:
        # The whole call stands for a prediction in flight: it holds the run's slot (and a paid one a slot
        # of the global limit), as a real provider does from its create to the prediction's end.
        with work.in_flight():
            return self._generate(plan, dest, work)

    def _generate(self, plan: ClipPlan, dest: Path, work: PaidWork) -> Generation:
        with self._lock:
            self.calls[plan.clip_index] += 1
            attempt = self.calls[plan.clip_index]
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        prediction_id = f"scripted-{plan.clip_index}-{attempt}-{uuid4().hex[:8]}"
        try:
            if self.paid:
                work.created(work.intend().id, prediction_id)
            time.sleep(self.delay_s)
            outcomes = self.script.get(plan.clip_index, [OK])
            outcome = outcomes[min(attempt, len(outcomes)) - 1]
            if outcome in (TRANSIENT, PERMANENT) and self.paid:
                work.ended(prediction_id, "failed", outcome)
            if outcome == TRANSIENT:
                raise TransientError(f"scripted 503 for clip {plan.clip_index}")
            if outcome == PERMANENT:
                raise PermanentError(f"scripted content rejection for clip {plan.clip_index}")
            seconds = plan.requested_duration if outcome == OK else max(0.5, plan.target_duration - 3)
            width, height = small_size(plan.width, plan.height)
            render_preview(dest, width=width, height=height, duration=seconds, fps=12, prompt=plan.prompt)
            if self.paid:
                work.ended(prediction_id, "succeeded")
            return Generation(prediction_id=prediction_id if self.paid else None)
        finally:
            with self._lock:
                self.in_flight -= 1

    def cancel(self, prediction_id: str) -> RemoteStatus | None:
        with self._lock:
            self.canceled.append(prediction_id)
        return "canceled"


class FlakyUploadStore(LocalStore):
    """The real local store, but the first `failures` uploads to `bucket` raise, like a storage outage."""

    def __init__(self, data_dir: Path, bucket: str, failures: int) -> None:
        super().__init__(data_dir)
        self.bucket = bucket
        self.failures = failures

    def put_object(self, bucket: str, path: str, source: Path, content_type: str) -> StoredObject:
        if bucket == self.bucket and self.failures > 0:
            self.failures -= 1
            raise ConnectionResetError(f"scripted storage outage writing {bucket}/{path}")
        return super().put_object(bucket, path, source, content_type)


def paced_provider(settings: object) -> ScriptedProvider:
    """A provider factory (`--provider tests.doubles:paced_provider`): one second per clip, for tests that
    watch a job unfold from another process."""
    return ScriptedProvider(delay_s=1.0)
