"""The steps the flow orchestrates, as plain functions: one clip attempt, one thumbnail, the work directory's
tidy-up (what the job reports as its clips finish is clipgen.job_report's).

Money is clipgen.paid_work's: every paid request, adoption, settlement and cancel goes through the clip's
`ClipWork`, under the clip's lease. What this module adds is the clip itself: a generated file is kept in
the job's work directory, with a sidecar naming the plan it was made for, until it is stored, so a retry
after a failed upload stores it without generating again (and on another machine, the ledger's succeeded
prediction is downloaded again).

It retries nothing itself: it types what failed (an output that does not decode: TransientError; a store
that did not take the clip: StoreFailed) and the clip task decides (tasks/__init__.py). Files are written
through clipgen.files.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clipgen import events
from clipgen.errors import (
    GenerationError,
    MediaError,
    PermanentError,
    StoreFailed,
    TransientError,
    is_final_for_plan,
    is_retryable,
)
from clipgen.files import write_text
from clipgen.job import Clip, Clips
from clipgen.media import VideoInfo, make_thumbnail, probe
from clipgen.paid_work import ClipWork
from clipgen.planning import ClipPlan, JobPlan, check_delivered
from clipgen.providers.base import Generation, VideoProvider
from clipgen.stores.base import (
    THUMBNAIL_BUCKET,
    VIDEO_BUCKET,
    ClipRecord,
    ClipStore,
    StoredObject,
    ThumbnailRecord,
    clip_object_path,
    thumbnail_object_path,
)

log = logging.getLogger(__name__)


class FailedBefore(PermanentError):
    """The clip failed for good in an earlier attempt of the same plan; it is not paid for again."""


@dataclass(frozen=True)
class Attempt:
    """Which attempt this is (1-based), how many there may be, and the delay before the next one."""

    number: int
    of: int
    next_delay_s: float = 0.0

    def retries_after(self, exc: BaseException) -> bool:
        return is_retryable(exc) and self.number < self.of


@dataclass(frozen=True)
class ClipFiles:
    """Where one clip's files live while it is being produced."""

    video: Path
    sidecar: Path
    thumbnail: Path

    @classmethod
    def of(cls, work_dir: Path, clip_index: int) -> ClipFiles:
        return cls(
            video=work_dir / f"clip_{clip_index}.mp4",
            sidecar=work_dir / f"clip_{clip_index}.generation.json",
            thumbnail=work_dir / f"clip_{clip_index}_thumbnail.jpg",
        )

    def discard(self) -> None:
        """Forget the generated file: the next attempt generates (or downloads) anew."""
        self.sidecar.unlink(missing_ok=True)
        self.video.unlink(missing_ok=True)


def job_work_dir(work_root: Path, plan: JobPlan | ClipPlan) -> Path:
    return work_root / str(plan.job_id)


def produce_clip(
    plan: ClipPlan,
    provider: VideoProvider,
    work: ClipWork,
    work_dir: Path,
    attempt: Attempt,
    started_at: datetime | None = None,
) -> Clip:
    """Generate (or reuse), check, store and record one clip, under the clip's lease. Raises typed errors.

    A clip stored for the same plan is returned as it is, and one that failed for good is not tried again:
    nothing is paid. A paid provider holds a slot of the prediction limits only while its prediction runs
    (`ClipWork.in_flight`); the download, the checks and the store happen outside it.
    """
    began = time.monotonic()
    store = work.job.store
    with work.hold(keep_for=attempt.retries_after):
        record = work.record()
        if record and work.stored(record) and (reused := _reused_clip(plan, store, work, record)):
            return reused
        if work.failed_for_good(record):
            assert record is not None
            raise FailedBefore(f"{record.error} (an earlier attempt; rerun with --retry-failed to pay again)")
        _begin(store, plan, work, record, attempt)
        files = ClipFiles.of(work_dir, plan.clip_index)
        try:
            generation = _generate_or_reuse(plan, provider, files, work)
            info = _checked(plan, files, work, generation)
            stored = _store_video(store, plan, files)
            elapsed = (
                (datetime.now(UTC) - started_at).total_seconds() if started_at else time.monotonic() - began
            )
            return _deliver(DeliveredAttempt(plan, work, attempt, generation, info, stored, elapsed))
        except Exception as exc:
            _record_failure(store, plan, work, attempt, exc)
            raise


def _begin(
    store: ClipStore, plan: ClipPlan, work: ClipWork, record: ClipRecord | None, attempt: Attempt
) -> None:
    same_plan = record is not None and record.plan_fingerprint == work.fingerprint
    store.upsert_clip(
        _record(
            plan,
            status="running",
            attempts=attempt.number,
            cost=work.cost(),
            prediction_id=record.prediction_id if record and same_plan else None,
            plan_fingerprint=work.fingerprint,
        )
    )


def _generate_or_reuse(
    plan: ClipPlan, provider: VideoProvider, files: ClipFiles, work: ClipWork
) -> Generation:
    if files.video.is_file() and files.sidecar.is_file():
        kept = Generation.model_validate_json(files.sidecar.read_text())
        if kept.metadata.get("plan_fingerprint") == work.fingerprint:
            return kept
        files.discard()
    files.video.parent.mkdir(parents=True, exist_ok=True)
    generation = provider.generate(plan, files.video, work)
    generation.metadata["plan_fingerprint"] = work.fingerprint
    write_text(files.sidecar, generation.model_dump_json())
    return generation


def _checked(plan: ClipPlan, files: ClipFiles, work: ClipWork, generation: Generation) -> VideoInfo:
    """Probe the file and apply the acceptance rule. A rejected output is dropped, and its prediction
    settled as rejected, so the next attempt pays for another instead of adopting it again."""
    try:
        info = probe(files.video)
        check_delivered(plan, info.duration, info.width, info.height)
    except MediaError as exc:
        files.discard()
        error = f"clip {plan.clip_index} output is not a readable video: {exc}"
        work.rejected(generation.prediction_id, error)
        raise TransientError(error) from exc
    except GenerationError as exc:
        files.discard()
        work.rejected(generation.prediction_id, str(exc))
        raise
    return info


def _store_video(store: ClipStore, plan: ClipPlan, files: ClipFiles) -> StoredObject:
    try:
        return store.put_object(
            VIDEO_BUCKET, clip_object_path(plan.job_id, plan.clip_index), files.video, "video/mp4"
        )
    except OSError as exc:
        # Free to retry: the paid file stays in the work directory, and its prediction stays adoptable.
        raise StoreFailed(f"storing clip {plan.clip_index} failed: {exc}") from exc


@dataclass(frozen=True)
class DeliveredAttempt:
    """A clip attempt whose output passed the checks and is stored: what its row and its Clip are made of."""

    plan: ClipPlan
    work: ClipWork
    attempt: Attempt
    generation: Generation
    info: VideoInfo
    stored: StoredObject
    elapsed_s: float

    def metadata(self) -> dict[str, Any]:
        metadata = {**self.plan.metadata, **self.generation.metadata}
        metadata.pop("plan_fingerprint", None)
        return metadata

    def record(self) -> ClipRecord:
        info = self.info
        return _record(
            self.plan,
            status="success",
            attempts=self.attempt.number,
            cost=self.work.cost(),
            prediction_id=self.generation.prediction_id,
            plan_fingerprint=self.work.fingerprint,
            actual_duration=round(info.duration, 3),
            width=info.width,
            height=info.height,
            fps=info.fps,
            video_path=self.stored.path,
            metadata=self.metadata(),
        )

    def clip(self) -> Clip:
        plan, info = self.plan, self.info
        return Clip(
            clip_index=plan.clip_index,
            video_url=self.stored.url,
            actual_duration=round(info.duration, 3),
            target_duration=plan.requested_duration,
            original_target_duration=plan.target_duration,
            duration_diff=round(info.duration - plan.target_duration, 3),
            status="success",
            cost=self.work.cost(),
            retry_count=self.attempt.number - 1,
            generation_time=round(self.elapsed_s, 3),
            metadata=self.metadata(),
            model=plan.model,
            prediction_id=self.generation.prediction_id,
            prediction_ids=self.work.prediction_ids(),
            width=info.width,
            height=info.height,
            fps=info.fps,
            storage_path=self.stored.path,
        )


def _deliver(delivered: DeliveredAttempt) -> Clip:
    # The row first: a process that dies before the ledger write leaves a stored clip (reused by the next
    # run) and a succeeded prediction (abandoned by it), never a clip to pay for again.
    delivered.work.job.store.upsert_clip(delivered.record())
    delivered.work.delivered(delivered.generation.prediction_id)
    return delivered.clip()


def failed_clip(plan: ClipPlan, work: ClipWork, error: BaseException | None) -> Clip:
    """The Clip for a clip whose attempts are over: attempts and money spent from the store, when readable."""
    try:
        work.refresh()
        record = work.record()
        cost, ids = work.cost(), work.prediction_ids()
    except Exception:
        log.warning("could not read the record of clip %d", plan.clip_index, exc_info=True)
        record, cost, ids = None, 0.0, []
    attempts = record.attempts if record else 1
    return Clip(
        clip_index=plan.clip_index,
        target_duration=plan.requested_duration,
        original_target_duration=plan.target_duration,
        status="failed",
        cost=cost,
        retry_count=max(0, attempts - 1),
        metadata=dict(plan.metadata),
        model=plan.model,
        prediction_id=ids[-1] if ids else None,
        prediction_ids=ids,
        error=_describe(error) if error else (record.error if record else "unknown error"),
    )


def produce_thumbnail(plan: ClipPlan, store: ClipStore, work_dir: Path) -> str:
    """Thumbnail the clip from the local file it was made from (no re-download), store and announce it."""
    files = ClipFiles.of(work_dir, plan.clip_index)
    make_thumbnail(files.video, files.thumbnail)
    path = thumbnail_object_path(plan.job_id, plan.clip_index)
    stored = store.put_object(THUMBNAIL_BUCKET, path, files.thumbnail, "image/jpeg")
    store.upsert_thumbnail(
        ThumbnailRecord(
            job_id=plan.job_id, clip_index=plan.clip_index, thumbnail_path=path, thumbnail_url=stored.url
        )
    )
    store.append_event(
        plan.job_id, events.THUMBNAIL_READY, events.thumbnail_ready(plan.clip_index, stored.url)
    )
    return stored.url


def tidy_work_dir(work_dir: Path, result: Clips) -> None:
    """Drop the local copies of the clips this run stored; keep files of failed clips, which a rerun may
    still use, and of reused ones: another run of the job may be thumbnailing what it stored."""
    for clip in result.clips:
        if clip.status == "success" and not clip.reused:
            files = ClipFiles.of(work_dir, clip.clip_index)
            files.discard()
            files.thumbnail.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty, or gone: another run of the job is using it
        work_dir.rmdir()


def _reused_clip(plan: ClipPlan, store: ClipStore, work: ClipWork, record: ClipRecord) -> Clip | None:
    """The clip as an earlier run stored it for this very plan, or None when its file is gone."""
    assert record.video_path is not None and record.actual_duration is not None
    try:
        url = store.signed_url(VIDEO_BUCKET, record.video_path)
    except (FileNotFoundError, PermanentError):
        log.warning("clip %d is on record but its file is gone; generating it again", plan.clip_index)
        return None
    return Clip(
        clip_index=plan.clip_index,
        video_url=url,
        actual_duration=record.actual_duration,
        target_duration=plan.requested_duration,
        original_target_duration=plan.target_duration,
        duration_diff=round(record.actual_duration - plan.target_duration, 3),
        status="success",
        cost=work.cost(),
        retry_count=max(0, record.attempts - 1),
        metadata=record.metadata or dict(plan.metadata),
        model=plan.model,
        prediction_id=record.prediction_id,
        prediction_ids=work.prediction_ids(),
        width=record.width,
        height=record.height,
        fps=record.fps,
        storage_path=record.video_path,
        reused=True,
    )


def _record(plan: ClipPlan, **fields: object) -> ClipRecord:
    return ClipRecord.model_validate(
        {
            "job_id": plan.job_id,
            "clip_index": plan.clip_index,
            "model": plan.model,
            "requested_duration": plan.requested_duration,
            "target_duration": plan.target_duration,
            **fields,
        }
    )


def _record_failure(
    store: ClipStore, plan: ClipPlan, work: ClipWork, attempt: Attempt, exc: Exception
) -> None:
    """Best effort: when the store is what failed, the original error must still be the one raised."""
    message = _describe(exc)
    retrying = attempt.retries_after(exc)
    try:
        record = work.record()
        update = {
            "status": "running" if retrying else "failed",
            "error": message,
            "cost": work.cost(),
            "failed_for_good": not retrying and is_final_for_plan(exc),
        }
        base = (
            record
            if record is not None
            else _record(plan, status="running", plan_fingerprint=work.fingerprint)
        )
        store.upsert_clip(base.model_copy(update=update))
        if retrying:
            delay = max(attempt.next_delay_s, getattr(exc, "retry_after", None) or 0.0)
            data = events.retry(plan.clip_index, attempt.number, delay, message)
            store.append_event(plan.job_id, events.RETRY, data)
    except Exception:
        log.warning("could not record the failed attempt of clip %d", plan.clip_index, exc_info=True)


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
