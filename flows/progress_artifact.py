"""The job's progress artifact in the Prefect UI: one artifact, updated at most once a second and once more at
the end, from a thread of its own, so the loop collecting the clips never waits on the Prefect API.

Each update is an API write: 12-14 ms on an idle server, 80 ms and more on a busy one. Made after every
clip on the collecting loop, it was most of the flow's overhead per clip (issue 19; docs/benchmarks.md).
The first update after a quiet second goes out at once, so clips minutes apart (a real model's) each show.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

UPDATE_INTERVAL_S = 1.0

Shown = tuple[float, str]
"""What the artifact shows: percent done, description."""


@contextmanager
def progress_artifact(key: str, description: str) -> Iterator[ProgressArtifact]:
    """A progress artifact at 0 %, updated by `show`; the last progress shown is sent when the block ends."""
    # Sync in a sync flow; the return type also admits the coroutine of the async form.
    artifact_id = cast(UUID, create_progress_artifact(0.0, key=key, description=description))
    artifact = ProgressArtifact(artifact_id)
    try:
        yield artifact
    finally:
        artifact.close()


class ProgressArtifact:
    """Sends the latest progress it was shown, at most once per `interval_s`, and what is left when closed.

    Progress shown while an update waits its turn replaces it: only the newest is sent.
    """

    def __init__(self, artifact_id: UUID, interval_s: float = UPDATE_INTERVAL_S) -> None:
        self.artifact_id, self._interval_s = artifact_id, interval_s
        self._wake = threading.Condition()
        self._pending: Shown | None = None
        self._closed = False
        self._last_sent = float("-inf")
        # The flow run's context (its API settings, its logger) goes with the thread.
        run_in_context = contextvars.copy_context().run
        self._sender = threading.Thread(
            target=run_in_context, args=(self._send_loop,), name="progress-artifact", daemon=True
        )
        self._sender.start()

    def show(self, percent: float, description: str) -> None:
        with self._wake:
            self._pending = (percent, description)
            self._wake.notify()

    def close(self) -> None:
        """Send what is still pending now, then stop."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._sender.join()

    def _send_loop(self) -> None:
        while (shown := self._next()) is not None:
            self._send(*shown)

    def _next(self) -> Shown | None:
        """The progress to send, once `interval_s` has passed since the last send (at once when closing);
        None when closed with nothing left to send."""
        with self._wake:
            while True:
                if self._pending is not None:
                    wait_s = self._last_sent + self._interval_s - time.monotonic()
                    if wait_s <= 0 or self._closed:
                        shown, self._pending = self._pending, None
                        self._last_sent = time.monotonic()
                        return shown
                    self._wake.wait(wait_s)
                elif self._closed:
                    return None
                else:
                    self._wake.wait()

    def _send(self, percent: float, description: str) -> None:
        try:
            update_progress_artifact(self.artifact_id, percent, description)
        except Exception:  # noqa: BLE001 - the UI's progress may lag; the job goes on
            get_run_logger().warning("progress artifact update failed; the job goes on", exc_info=True)
