"""Real Prefect flow runs against scripted providers and the real local store (SQLite + files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from PIL import Image

from clipgen import events
from clipgen.backends import register_provider, register_store
from clipgen.job import ClipPrompts, Clips, GenerationOptions
from clipgen.media import probe
from clipgen.settings import Settings
from clipgen.stores.base import THUMBNAIL_BUCKET, VIDEO_BUCKET
from clipgen.stores.local import LocalStore
from flows.video_generator import generate_video_clips
from tests.doubles import OK, PERMANENT, SHORT, TRANSIENT, FlakyUploadStore, ScriptedProvider

pytestmark = pytest.mark.usefixtures("prefect_server")


def make_job(n: int, duration: float = 2.0, **extra: Any) -> ClipPrompts:
    return ClipPrompts.model_validate(
        {
            "job_id": str(uuid4()),
            "clip_prompts": [
                {"clip_index": i, "prompt": f"clip number {i}", "duration": duration, **extra}
                for i in range(n)
            ],
        }
    )


def run(job: ClipPrompts, provider: ScriptedProvider, **options: Any) -> Any:
    register_provider("scripted", lambda settings: provider)
    opts = GenerationOptions(model="veo-3.1", **options)
    return generate_video_clips(job, opts, provider="scripted", store="local", return_state=True)


def store() -> LocalStore:
    return LocalStore(Settings().data_dir)


def event_names(job: ClipPrompts) -> list[str]:
    return [e.event for e in store().events(job.job_id)]


def test_partial_success_three_of_five_completes() -> None:
    job = make_job(5)
    provider = ScriptedProvider({1: [PERMANENT], 3: [PERMANENT]})
    state = run(job, provider)

    assert state.is_completed()
    assert state.message == "3/5 clips"
    result = state.result()
    assert isinstance(result, Clips)
    assert (result.successful_clips, result.failed_clips) == (3, 2)
    assert [c.status for c in result.clips] == ["success", "failed", "success", "failed", "success"]
    assert "content rejection" in (result.clips[1].error or "")
    assert event_names(job)[-1] == events.COMPLETE


def test_two_of_five_fails_with_counts_and_event() -> None:
    job = make_job(5)
    provider = ScriptedProvider({0: [PERMANENT], 1: [PERMANENT], 2: [PERMANENT]})
    state = run(job, provider)

    assert state.is_failed()
    assert state.message.startswith("2/5 clips succeeded, 3 needed; first errors: clip 0:")
    failed = [e for e in store().events(job.job_id) if e.event == events.FAILED]
    assert len(failed) == 1
    assert failed[0].data["successful_clips"] == 2
    assert failed[0].data["min_success"] == 3
    assert len(failed[0].data["errors"]) == 3


def test_transient_failures_are_retried_and_recorded() -> None:
    job = make_job(4, duration=4.0)  # accepted from 2 s; SHORT delivers 1 s
    script = {0: [TRANSIENT, OK], 1: [TRANSIENT, TRANSIENT, OK], 2: [SHORT, OK]}
    provider = ScriptedProvider(script, paid=True)
    state = run(job, provider)

    result = state.result()
    assert result.successful_clips == 4
    by_index = {c.clip_index: c for c in result.clips}
    assert [by_index[i].retry_count for i in range(4)] == [1, 2, 1, 0]
    assert provider.calls == {0: 2, 1: 3, 2: 2, 3: 1}
    # Every paid generation is accounted for: the short clip's first generation is in its cost.
    price = result.clips[3].cost
    assert price > 0 and [by_index[i].cost for i in range(4)] == pytest.approx(
        [2 * price, 3 * price, 2 * price, price]
    )
    assert len(by_index[2].prediction_ids) == 2
    assert result.spent_this_run == result.spent_all_runs == pytest.approx(8 * price)
    retries = [e.data for e in store().events(job.job_id) if e.event == events.RETRY]
    assert sorted((r["clip_index"], r["attempt"]) for r in retries) == [(0, 1), (1, 1), (1, 2), (2, 1)]
    records = {r.clip_index: r for r in store().clip_records(job.job_id)}
    assert records[1].attempts == 3


def test_permanent_errors_and_exhausted_retries_are_not_retried_further() -> None:
    job = make_job(4)
    provider = ScriptedProvider({0: [PERMANENT], 1: [TRANSIENT]})
    state = run(job, provider, min_success=2)

    assert state.is_completed()
    assert provider.calls[0] == 1  # permanent: one attempt
    assert provider.calls[1] == 3  # transient: three attempts, then given up
    records = {r.clip_index: r for r in store().clip_records(job.job_id)}
    assert records[0].status == records[1].status == "failed"
    assert records[1].attempts == 3


def test_never_more_than_five_clips_at_once_and_no_thumbnail_lost() -> None:
    job = make_job(12)
    provider = ScriptedProvider(delay_s=0.4)
    state = run(job, provider)

    result = state.result()
    assert result.successful_clips == 12
    assert provider.max_in_flight == 5
    thumbnails = store().thumbnail_records(job.job_id)
    assert sorted(t.clip_index for t in thumbnails) == list(range(12))
    assert all(c.thumbnail_url for c in result.clips)
    for record in thumbnails:
        with Image.open(Path(record.thumbnail_url.removeprefix("file://"))) as image:
            assert image.size == (320, 180)


def test_concurrency_option_is_honoured() -> None:
    provider = ScriptedProvider(delay_s=0.3)
    run(make_job(6), provider, concurrency=2)
    assert provider.max_in_flight == 2


def test_events_are_in_order_and_work_files_are_tidied() -> None:
    job = make_job(3)
    run(job, ScriptedProvider())

    names = [n for n in event_names(job) if n != events.THUMBNAIL_READY]
    assert names == [events.START, events.PROGRESS, events.PROGRESS, events.PROGRESS, events.COMPLETE]
    progress = [e.data for e in store().events(job.job_id) if e.event == events.PROGRESS]
    assert [p["completed"] for p in progress] == [1, 2, 3]
    assert not (Settings().work_dir / str(job.job_id)).exists()


def test_delivered_durations_are_probed_and_stored() -> None:
    job = make_job(3, duration=5.0)
    result = run(job, ScriptedProvider()).result()
    for clip in result.clips:
        info = probe(Path(clip.video_url.removeprefix("file://")))
        assert clip.actual_duration == pytest.approx(info.duration, abs=1e-3)
        assert clip.target_duration == 6.0  # veo-3.1: smallest of 4|6|8 >= 5
        assert clip.original_target_duration == 5.0
        assert clip.actual_duration >= clip.original_target_duration - 2.0
        assert 0 < clip.generation_time < 30


def run_with_store(job: ClipPrompts, provider: ScriptedProvider, clip_store: LocalStore) -> Any:
    register_provider("scripted", lambda settings: provider)
    register_store("flaky", lambda settings: clip_store)
    return generate_video_clips(
        job, GenerationOptions(model="veo-3.1"), provider="scripted", store="flaky", return_state=True
    )


def test_failed_upload_is_retried_without_paying_for_a_new_generation() -> None:
    job = make_job(3)
    provider = ScriptedProvider()
    state = run_with_store(job, provider, FlakyUploadStore(Settings().data_dir, VIDEO_BUCKET, failures=2))

    assert state.result().successful_clips == 3
    assert provider.calls == {0: 1, 1: 1, 2: 1}  # the kept file was stored on the retry
    assert sum(e.event == events.RETRY for e in store().events(job.job_id)) == 2


def test_failed_thumbnail_never_fails_the_job() -> None:
    job = make_job(3)
    state = run_with_store(
        job, ScriptedProvider(), FlakyUploadStore(Settings().data_dir, THUMBNAIL_BUCKET, 99)
    )

    assert state.is_completed()
    result = state.result()
    assert result.successful_clips == 3
    assert all(clip.thumbnail_url is None for clip in result.clips)


def test_thumbnails_come_as_clips_land_not_after_the_last() -> None:
    job = make_job(4)
    run(job, ScriptedProvider(delay_s=0.3), concurrency=1)  # later clips still queued when the first lands
    names = event_names(job)
    first_thumbnail = names.index(events.THUMBNAIL_READY)
    last_progress = len(names) - 1 - names[::-1].index(events.PROGRESS)
    assert first_thumbnail < last_progress, names
