"""SSE delivery: from an event written to the store to a subscriber receiving it.

The real `serve` app (`clipgen.server.create_app`, its default poll interval) on a real socket
(`staging.serving.ServerThread`), over a local store in its own directory; the subscriber is httpx-sse, as
an app's client would be. Events are appended through a second store object, as the flow (another thread or
process) does, at seeded random gaps so they land at every phase of the server's polling.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from uuid import UUID, uuid4

import httpx
from httpx_sse import connect_sse

from benchmarks.common import median, percentile
from benchmarks.report import Figure, figure
from clipgen import events
from clipgen.server import create_app
from clipgen.settings import Settings
from clipgen.stores.local import LocalStore
from staging.serving import ServerThread

CONNECT_TIMEOUT_S = 30.0
GAP_S = (0.05, 0.4)  # between appended events: spans more than one poll interval (0.25 s)


class Subscriber(threading.Thread):
    """Reads the job's stream until its final event, noting when each event id arrived."""

    def __init__(self, url: str) -> None:
        super().__init__(name="benchmark-sse-subscriber", daemon=True)
        self.url = url
        self.received: dict[int, float] = {}
        self.connected = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with (
                httpx.Client(timeout=httpx.Timeout(60.0, read=60.0)) as client,
                connect_sse(client, "GET", self.url) as source,
            ):
                for sse in source.iter_sse():
                    self.received[int(sse.id)] = time.monotonic()
                    self.connected.set()
        except BaseException as exc:  # noqa: BLE001 - reported by the measuring thread
            self.error = exc
            self.connected.set()


def delivery_latencies(data_dir: Path, count: int, seed: int) -> list[float]:
    """Seconds from each of `count` appends returning to the subscriber holding the event."""
    writer = LocalStore(data_dir)
    job_id = uuid4()
    # The stream answers 404 for a job with no events: the job exists once its first event does.
    writer.append_event(job_id, events.START, {"total_clips": count})
    # api_token=None: a token in the caller's environment would otherwise guard the routes.
    app = create_app(Settings(data_dir=data_dir, store="local", api_token=None))
    with ServerThread(app, lifespan="on", name="benchmark-sse") as server:
        subscriber = Subscriber(f"{server.base_url}/jobs/{job_id}/events")
        subscriber.start()
        if not subscriber.connected.wait(CONNECT_TIMEOUT_S) or subscriber.error:
            raise RuntimeError(f"the subscriber did not connect: {subscriber.error!r}")
        written = _append_events(writer, job_id, count, random.Random(seed))
        subscriber.join(CONNECT_TIMEOUT_S)
    if subscriber.error or subscriber.is_alive():
        raise RuntimeError(f"the stream did not end cleanly: {subscriber.error!r}")
    missing = set(written) - set(subscriber.received)
    if missing:
        raise RuntimeError(f"events {sorted(missing)} never reached the subscriber")
    return [subscriber.received[event_id] - at for event_id, at in written.items()]


def _append_events(writer: LocalStore, job_id: UUID, count: int, rng: random.Random) -> dict[int, float]:
    """Append progress events at random gaps, then the final one; returns id -> when its append returned."""
    written: dict[int, float] = {}
    for index in range(count):
        time.sleep(rng.uniform(*GAP_S))
        data = {"clip_index": index, "status": "success", "completed": index + 1, "failed": 0, "total": count}
        event_id = writer.append_event(job_id, events.PROGRESS, data)
        written[event_id] = time.monotonic()
    time.sleep(rng.uniform(*GAP_S))
    final = writer.append_event(job_id, events.COMPLETE, {"successful_clips": count, "failed_clips": 0})
    written[final] = time.monotonic()
    return written


def measure_sse(root: Path, count: int, repeat: int) -> list[Figure]:
    medians, p95s = [], []
    for round_number in range(repeat):
        latencies = delivery_latencies(root / f"sse-{round_number}", count, seed=round_number)
        medians.append(median(latencies) * 1000)
        p95s.append(percentile(latencies, 95) * 1000)
    how = f"{count + 1} events per run at random gaps; append returned → httpx-sse yielded it"
    return [
        figure("sse_median_ms", "SSE delivery, median", "ms", medians, at_most=250.0, how=how),
        figure(
            "sse_p95_ms", "SSE delivery, p95", "ms", p95s, how=f"{how}; server polls the store every 0.25 s"
        ),
    ]
