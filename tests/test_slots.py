"""A slot is a prediction in flight (issue 19). With options.concurrency = 1, another clip's prediction is
created while a clip downloads its output, stores it, or waits out a retry's backoff; the run's cap still
holds, and each clip is paid for once.

Real flow runs against the fake Replicate. What they show is read from the fake's own timeline (predictions
created and ended, output downloads started and finished, in the order they happened, with the predictions
in flight after each), never from timings. A hold of a few seconds (a slow download, a slow upload, a retry's
backoff) only makes room for the order to show. Before issue 19 a slot was a clip's whole attempt: with one
slot, nothing was created until the clip before had ended, so each of these orders was impossible.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType
from uuid import uuid4

import pytest

from clipgen.job import ClipPrompts, Clips, GenerationOptions
from clipgen.stores.base import VIDEO_BUCKET
from flows.video_generator import generate_video_clips
from staging.fake_replicate.server import FakeEvent, FakeReplicateServer, Fault
from tests.conftest import SupabaseStack
from tests.stack.gateway import RequestRecord, StorageFaults

pytestmark = pytest.mark.usefixtures("prefect_server")

TOKEN = "slot-tests-token"
# A prediction runs this long: longer than a clip takes from its prediction's end to its upload, so the
# clip whose prediction ended first is the first to upload.
LATENCY_S = 1.0
HOLD_S = 3.0  # a held download or upload: longer than a clip waits for the slot after the clip before it
BACKOFF_S = "2"  # the first retry's delay (Prefect adds up to half of it as jitter)
_CLIP = re.compile(r"\[\w+ clip (\d+)\]")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeReplicateServer]:
    """A fake of the test's own (its counts are the run's), and the worker's settings pointing at it."""
    with FakeReplicateServer(token=TOKEN, latency_s=LATENCY_S) as server:
        monkeypatch.setenv("REPLICATE_API_TOKEN", TOKEN)
        monkeypatch.setenv("REPLICATE_BASE_URL", server.base_url)
        monkeypatch.setenv("REPLICATE_POLL_INTERVAL", "0.05")
        # The run's own cap (options.concurrency) is what is shown: take no global limit's slots.
        monkeypatch.setenv("VIDEO_GENERATOR_PREDICTION_LIMIT", "")
        yield server


@dataclass(frozen=True)
class Job:
    tag: str  # in every prompt of the job: a fault's `match` for "this job's first ..."
    prompts: ClipPrompts


def make_job(clips: int) -> Job:
    tag = uuid4().hex[:10]
    prompts = [
        {"clip_index": i, "prompt": f"[{tag} clip {i}] a paper boat on a rainy street", "duration": 4.0}
        for i in range(clips)
    ]
    return Job(tag, ClipPrompts.model_validate({"job_id": str(uuid4()), "clip_prompts": prompts}))


def run(job: Job, store: str = "local") -> Clips:
    """The job through the real flow on Replicate (the fake), one prediction at a time; every clip made."""
    clips = len(job.prompts.clip_prompts)
    options = GenerationOptions(model="veo-3.1", concurrency=1, min_success=clips)
    state = generate_video_clips(job.prompts, options, provider="replicate", store=store, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert isinstance(result, Clips) and result.successful_clips == clips
    return result


def clip_of(event: FakeEvent) -> int:
    found = _CLIP.search(event.prompt)
    assert found, event.prompt
    return int(found[1])


def described(timeline: list[FakeEvent]) -> str:
    """The timeline, one event a line, for an assertion's message."""
    return "\n".join(
        f"{n:3} {e.kind:18} clip {clip_of(e)} {e.prediction_id[:8]} in flight {e.in_flight}"
        + (f" ({e.status})" if e.status else "")
        for n, e in enumerate(timeline)
    )


def created_between(timeline: list[FakeEvent], start: int, end: int, *, besides: int) -> list[int]:
    """The clips (other than `besides`) whose predictions were created between events `start` and `end`."""
    return [clip_of(e) for e in timeline[start:end] if e.kind == "created" and clip_of(e) != besides]


def assert_cap_held_and_paid_once(fake: FakeReplicateServer, job: Job, failed: int = 0) -> None:
    """Never more than one prediction in flight (options.concurrency); one prediction per clip, plus one
    for each prediction the fake was told to fail."""
    timeline = fake.timeline
    assert fake.max_in_flight == 1, described(timeline)
    assert max(e.in_flight for e in timeline) == 1
    creates = Counter(clip_of(e) for e in timeline if e.kind == "created")
    assert sorted(creates) == list(range(len(job.prompts.clip_prompts))), described(timeline)
    assert sum(creates.values()) == fake.creates == len(creates) + failed, described(timeline)


def test_a_clip_downloading_its_output_holds_no_slot(fake: FakeReplicateServer) -> None:
    """The job's first download is held open: once that clip's prediction has ended, another clip's is
    created before the download finishes. Before, the clip held its slot until its whole attempt ended:
    none could be."""
    job = make_job(2)
    fake.add_fault(Fault(kind="slow_download", match=job.tag, seconds=HOLD_S))
    run(job)

    timeline = fake.timeline
    held = next(e for e in timeline if e.kind == "download_started")
    assert fake.prediction(held.prediction_id)["faults"] == ["slow_download"]
    ended, finished = (
        next(n for n, e in enumerate(timeline) if e.kind == kind and e.prediction_id == held.prediction_id)
        for kind in ("ended", "download_finished")
    )
    assert timeline[ended].in_flight == 0  # its slot is free from here
    assert created_between(timeline, ended, finished, besides=clip_of(held)), described(timeline)
    assert_cap_held_and_paid_once(fake, job)


def test_a_clip_waiting_out_a_retry_backoff_holds_no_slot(
    fake: FakeReplicateServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's first prediction fails with an error that passes (the clip task retries it after a
    backoff): the other clip's prediction is created before the failed clip's second. Before, the backoff
    was slept in the clip's slot: its second prediction came first."""
    monkeypatch.setenv("VIDEO_GENERATOR_RETRY_BACKOFF_SECONDS", BACKOFF_S)
    job = make_job(2)
    fake.add_fault(Fault(kind="fail", match=job.tag, error="Internal error"))  # transient: retried
    result = run(job)

    timeline = fake.timeline
    failed = next(n for n, e in enumerate(timeline) if e.kind == "ended" and e.status == "failed")
    clip = clip_of(timeline[failed])
    again = next(
        n for n, e in enumerate(timeline) if n > failed and e.kind == "created" and clip_of(e) == clip
    )
    assert created_between(timeline, failed, again, besides=clip), described(timeline)
    assert [c.retry_count for c in result.clips if c.clip_index == clip] == [1]
    assert_cap_held_and_paid_once(fake, job, failed=1)


# --- storing: the Supabase stack's gateway holds or fails the upload --------------------------------------


@dataclass(frozen=True)
class _Sample:
    events: int  # the fake's timeline length, read before the gateway's record
    uploads: int  # the job's clip uploads the gateway had answered


@dataclass
class UploadWatch:
    """Places the gateway's answers to one job's clip uploads on the fake's timeline, from a thread that reads
    both records in turn. It only reads, in an order that makes its bound safe (see `answered_before`)."""

    fake: FakeReplicateServer
    storage: StorageFaults
    job_id: str
    samples: list[_Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> UploadWatch:
        self._sample()
        self._thread = threading.Thread(target=self._watch, name="upload-watch")
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()  # every upload of the run is answered by now

    def uploads(self) -> list[RequestRecord]:
        """The job's clip uploads the gateway answered, in order."""
        return [
            r
            for r in self.storage.requests
            if r.operation == "upload" and r.bucket == VIDEO_BUCKET and self.job_id in r.path
        ]

    def answered_before(self, upload: int) -> int:
        """Events below this index on the timeline happened before upload number `upload` (0: the job's
        first) was answered: a sample that had not seen the answer read the timeline before it came."""
        return max(s.events for s in self.samples if s.uploads <= upload)

    def _watch(self) -> None:
        while not self._stop.wait(0.002):
            self._sample()

    def _sample(self) -> None:
        events = len(self.fake.timeline)
        self.samples.append(_Sample(events, len(self.uploads())))


@pytest.fixture
def stack(supabase_env: SupabaseStack, fake: FakeReplicateServer) -> Iterator[SupabaseStack]:
    yield supabase_env
    supabase_env.storage.clear_faults()


def stored_clip(upload: RequestRecord) -> int:
    found = re.search(r"clip_(\d+)\.mp4$", upload.path)
    assert found, upload.path
    return int(found[1])


def created_while_storing(fake: FakeReplicateServer, watch: UploadWatch, stored: int) -> list[int]:
    """The clips whose predictions were created after the prediction of the clip of upload number `stored`
    ended, and before that upload was answered: while the clip was downloaded, checked and stored."""
    timeline = fake.timeline
    clip = stored_clip(watch.uploads()[stored])
    ended = max(n for n, e in enumerate(timeline) if e.kind == "ended" and clip_of(e) == clip)
    return created_between(timeline, ended, watch.answered_before(stored), besides=clip)


def test_a_clip_storing_its_output_holds_no_slot(fake: FakeReplicateServer, stack: SupabaseStack) -> None:
    """Every clip upload is held at the gateway: once the first clip's prediction has ended, the other
    clip's is created before that clip's upload is answered. Before, a clip held its slot until it was
    stored: none could be."""
    job = make_job(2)
    stack.storage.delay_next(2, HOLD_S, bucket=VIDEO_BUCKET, operation="upload")
    with UploadWatch(fake, stack.storage, str(job.prompts.job_id)) as watch:
        run(job, store="supabase")

    uploads = watch.uploads()
    assert [r.status for r in uploads] == [200] * 2
    first = clip_of(next(e for e in fake.timeline if e.kind == "ended"))
    stored = next(n for n, r in enumerate(uploads) if stored_clip(r) == first)
    assert created_while_storing(fake, watch, stored), described(fake.timeline)
    assert_cap_held_and_paid_once(fake, job)


def test_a_clip_waiting_to_store_again_holds_no_slot(
    fake: FakeReplicateServer, stack: SupabaseStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's first clip upload fails (503): the clip task stores the kept file again after a backoff,
    paying for nothing new. Another clip's prediction is created before the upload that stores it. Before,
    the clip waited out the backoff in its slot: none could be."""
    monkeypatch.setenv("VIDEO_GENERATOR_RETRY_BACKOFF_SECONDS", BACKOFF_S)
    job = make_job(3)
    stack.storage.fail_next(1, status=503, bucket=VIDEO_BUCKET, operation="upload")
    with UploadWatch(fake, stack.storage, str(job.prompts.job_id)) as watch:
        run(job, store="supabase")

    uploads = watch.uploads()
    assert uploads[0].status == 503
    stored = next(n for n, r in enumerate(uploads) if n > 0 and r.path == uploads[0].path)
    assert uploads[stored].status == 200
    assert created_while_storing(fake, watch, stored), described(fake.timeline)
    assert_cap_held_and_paid_once(fake, job)
