"""The steps the flow orchestrates, as plain functions: one clip attempt, one thumbnail, the job's log.

Nothing paid for is paid for twice:
- a prediction's id is recorded (clips row and work directory) the moment it is created, and the next
  attempt hands it back to the provider, which re-attaches to it instead of creating another;
- before each paid create the clip's row says a create is on its way (`create_sent_at`), and the ledger
  write clears it: when the process dies in between, the next attempt (on any machine) has the provider
  look for the prediction that create made before paying for another;
- a generated file is kept in the job's work directory, with a sidecar naming the plan it was made for,
  until it is stored, so a retry after a failed upload (or a rerun of the job) stores it without generating.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from clipgen import events
from clipgen.budget import Budget
from clipgen.errors import GenerationError, MediaError, PermanentError, TransientError, is_retryable
from clipgen.job import Clip, Clips
from clipgen.media import VideoInfo, make_thumbnail, probe
from clipgen.planning import ClipPlan, JobPlan, check_delivered
from clipgen.providers.base import Generation, LostCreate, VideoProvider
from clipgen.stores.base import (
    THUMBNAIL_BUCKET,
    VIDEO_BUCKET,
    ClipRecord,
    ClipStore,
    PredictionRecord,
    PredictionStatus,
    ThumbnailRecord,
    clip_object_path,
    thumbnail_object_path,
)

log = logging.getLogger(__name__)
ERRORS_IN_SUMMARY = 3


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
    prediction: Path
    thumbnail: Path

    @classmethod
    def of(cls, work_dir: Path, clip_index: int) -> ClipFiles:
        return cls(
            video=work_dir / f"clip_{clip_index}.mp4",
            sidecar=work_dir / f"clip_{clip_index}.generation.json",
            prediction=work_dir / f"clip_{clip_index}.prediction.json",
            thumbnail=work_dir / f"clip_{clip_index}_thumbnail.jpg",
        )

    def discard(self) -> None:
        """Forget the generated file and the prediction it came from: the next attempt generates anew."""
        self.sidecar.unlink(missing_ok=True)
        self.video.unlink(missing_ok=True)
        self.prediction.unlink(missing_ok=True)


def job_work_dir(work_root: Path, plan: JobPlan | ClipPlan) -> Path:
    return work_root / str(plan.job_id)


def produce_clip(
    plan: ClipPlan,
    provider: VideoProvider,
    store: ClipStore,
    work_dir: Path,
    attempt: Attempt,
    started_at: datetime | None = None,
    slot: Callable[[], AbstractContextManager[object]] = nullcontext,
    run_id: str | None = None,
    budget: Budget | None = None,
) -> Clip:
    """Generate (or reuse), check, store and record one clip. Raises typed errors; records every attempt.

    A clip already stored for the same plan is returned as it is: nothing is generated or paid again. Every
    paid request goes into the store's prediction ledger the moment it exists (with `run_id`, the flow run);
    an attempt adopts the clip's newest unfinished one instead of paying for another, from the work
    directory or, after a crash or on another machine, from the ledger. `slot` is held while the provider
    works (from before its request is created until it returns), so a cap on in-flight predictions shared
    by every run and worker can be put around it. `budget` refuses a paid request that would take the job
    past its budget.
    """
    began = time.monotonic()
    fingerprint = plan_fingerprint(plan)
    previous = _clip_record(store, plan)
    if (stored_clip := _already_stored(plan, store, previous, fingerprint)) is not None:
        return stored_clip
    job_ledger = store.predictions(plan.job_id)
    lost_create = _lost_create(previous, fingerprint, job_ledger)
    # What the clip has cost so far, over every attempt and rerun: a paid request is never forgotten. Nor is
    # a create whose answer was never recorded, until it is found or another create is recorded.
    record = _record(
        plan,
        status="running",
        attempts=attempt.number,
        cost=previous.cost if previous else 0.0,
        prediction_id=previous.prediction_id if previous else None,
        plan_fingerprint=fingerprint,
        create_sent_at=lost_create.sent_at if lost_create else None,
    )
    store.upsert_clip(record)
    files = ClipFiles.of(work_dir, plan.clip_index)
    ledger = [p for p in job_ledger if p.clip_index == plan.clip_index]
    known_ids = {record.prediction_id, _read_json(files.prediction).get("prediction_id")} - {None}
    known_ids |= {p.prediction_id for p in ledger}
    paid_here: list[str] = []
    reserved: list[float] = []

    def before_create() -> None:
        nonlocal record
        if budget is not None:
            budget.reserve(plan.estimated_cost, f"clip {plan.clip_index}")
            reserved.append(plan.estimated_cost)
        # The intent, on record before the request leaves. An earlier unanswered create keeps its (earlier)
        # time: the prediction it may have made is still looked for until a create is recorded.
        sent_at = record.create_sent_at or datetime.now(UTC)
        record = record.model_copy(update={"create_sent_at": sent_at})
        store.upsert_clip(record)

    def created(prediction_id: str) -> None:
        # On the bill the moment it exists, before any waiting: a prediction that later fails, hangs or
        # is lost to a crash is still accounted for, and can be adopted or canceled by whoever comes next.
        nonlocal record
        _write_json(files.prediction, {"prediction_id": prediction_id, "plan": fingerprint})
        paid_here.append(prediction_id)
        if reserved:
            reserved.pop()  # the reservation is now money spent
        record = record.model_copy(
            update={
                "prediction_id": prediction_id,
                "cost": record.cost + plan.estimated_cost,
                "create_sent_at": None,  # the create is answered and on the ledger
            }
        )
        store.record_prediction(
            PredictionRecord(
                prediction_id=prediction_id,
                job_id=plan.job_id,
                clip_index=plan.clip_index,
                provider=provider.name,
                model=plan.model,
                plan_fingerprint=fingerprint,
                run_id=run_id,
                cost=plan.estimated_cost,
            )
        )
        store.upsert_clip(record)

    adoptable = _adoptable(ledger, fingerprint)
    generation: Generation | None = None
    try:
        try:
            generation, fresh = _generate_or_reuse(
                plan, provider, files, created, before_create, slot, adoptable, lost_create
            )
        finally:
            if budget is not None:
                for amount in reserved:  # reserved, but the request was never created
                    budget.release(amount)
        if fresh and not paid_here and generation.prediction_id not in known_ids:
            # A provider that does not report creations: its generation is paid for now.
            record = record.model_copy(update={"cost": record.cost + generation.cost})
        record = record.model_copy(update={"prediction_id": generation.prediction_id or record.prediction_id})
        store.upsert_clip(record)
        try:
            info = _checked(plan, files)
        except GenerationError as exc:
            _settle_prediction(store, plan.job_id, generation.prediction_id, "rejected", str(exc))
            raise
        try:
            stored = store.put_object(
                VIDEO_BUCKET, clip_object_path(plan.job_id, plan.clip_index), files.video, "video/mp4"
            )
        except OSError as exc:
            # Free to retry: the paid file stays in the work directory and is reused.
            raise TransientError(f"storing clip {plan.clip_index} failed: {exc}") from exc
        store.upsert_clip(
            record.model_copy(
                update={
                    "status": "success",
                    "actual_duration": round(info.duration, 3),
                    "width": info.width,
                    "height": info.height,
                    "fps": info.fps,
                    "video_path": stored.path,
                    "error": None,
                }
            )
        )
        _settle_prediction(store, plan.job_id, generation.prediction_id, "delivered", None)
    except Exception as exc:
        if isinstance(exc, PermanentError) and generation is None and paid_here:
            # The provider says this prediction failed for good (e.g. content rejected): nothing to adopt.
            _settle_prediction(store, plan.job_id, paid_here[-1], "failed", str(exc))
        _record_failure(store, plan, record, attempt, exc)
        raise
    # From the first attempt's start when the caller knows it (Prefect's task run start), else this attempt.
    elapsed = (datetime.now(UTC) - started_at).total_seconds() if started_at else time.monotonic() - began
    return Clip(
        clip_index=plan.clip_index,
        video_url=stored.url,
        actual_duration=round(info.duration, 3),
        target_duration=plan.requested_duration,
        original_target_duration=plan.target_duration,
        duration_diff=round(info.duration - plan.target_duration, 3),
        status="success",
        cost=round(record.cost, 4),
        retry_count=attempt.number - 1,
        generation_time=round(elapsed, 3),
        metadata={**plan.metadata, **generation.metadata},
        model=plan.model,
        prediction_id=generation.prediction_id,
        width=info.width,
        height=info.height,
        fps=info.fps,
        storage_path=stored.path,
    )


def failed_clip(plan: ClipPlan, store: ClipStore, error: BaseException | None) -> Clip:
    """The Clip for a clip whose attempts are over, from its record (attempts, money spent) when readable."""
    try:
        record = _clip_record(store, plan)
    except Exception:
        log.warning("could not read the record of clip %d", plan.clip_index, exc_info=True)
        record = None
    attempts = record.attempts if record else 1
    return Clip(
        clip_index=plan.clip_index,
        target_duration=plan.requested_duration,
        original_target_duration=plan.target_duration,
        status="failed",
        cost=record.cost if record else 0.0,
        retry_count=max(0, attempts - 1),
        metadata=dict(plan.metadata),
        model=plan.model,
        prediction_id=record.prediction_id if record else None,
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


@dataclass(frozen=True)
class Outcome:
    succeeded: bool
    message: str
    errors: list[str]


def decide_outcome(result: Clips, min_success: int) -> Outcome:
    """Partial success is a normal outcome: the job succeeds with at least `min_success` clips."""
    errors = [f"clip {c.clip_index}: {c.error}" for c in result.clips if c.status == "failed"]
    summary = f"{result.successful_clips}/{result.total_clips} clips"
    if result.successful_clips >= min_success:
        return Outcome(True, summary, errors)
    first = "; ".join(errors[:ERRORS_IN_SUMMARY]) or "none"
    return Outcome(False, f"{summary} succeeded, {min_success} needed; first errors: {first}", errors)


Announced = tuple[str, dict[str, Any]]
"""An event as appended to the job's log: (name, data)."""


def announce_start(store: ClipStore, plan: JobPlan) -> Announced:
    return _announce(store, plan, events.START, events.start(plan))


def announce_progress(store: ClipStore, plan: JobPlan, clip: Clip, tally: events.Tally) -> Announced:
    """`tally` already counts `clip`."""
    return _announce(store, plan, events.PROGRESS, events.progress(clip, tally))


def announce_end(store: ClipStore, plan: JobPlan, result: Clips, outcome: Outcome) -> Announced:
    if outcome.succeeded:
        return _announce(store, plan, events.COMPLETE, events.complete(result))
    return _announce(store, plan, events.FAILED, events.failed(result, plan.min_success, outcome.errors))


def _announce(store: ClipStore, plan: JobPlan, name: str, data: dict[str, Any]) -> Announced:
    store.append_event(plan.job_id, name, data)
    return name, data


def clip_table(result: Clips) -> list[dict[str, Any]]:
    """One row per clip, for a table artifact: index, status, durations, cost, links."""
    return [
        {
            "clip": clip.clip_index,
            "status": clip.status,
            "target_s": clip.original_target_duration,
            "requested_s": clip.target_duration,
            "actual_s": clip.actual_duration,
            "retries": clip.retry_count,
            "cost_usd": clip.cost,
            "video": clip.video_url or "",
            "thumbnail": clip.thumbnail_url or "",
            "error": clip.error or "",
        }
        for clip in result.clips
    ]


def tidy_work_dir(work_dir: Path, result: Clips) -> None:
    """Drop the local copies of stored clips; keep files of failed clips, which a rerun may still use."""
    for clip in result.clips:
        if clip.status == "success":
            files = ClipFiles.of(work_dir, clip.clip_index)
            files.discard()
            files.thumbnail.unlink(missing_ok=True)
    if work_dir.is_dir() and not any(work_dir.iterdir()):
        shutil.rmtree(work_dir, ignore_errors=True)


def _generate_or_reuse(
    plan: ClipPlan,
    provider: VideoProvider,
    files: ClipFiles,
    created: Callable[[str], None],
    before_create: Callable[[], None],
    slot: Callable[[], AbstractContextManager[object]],
    adoptable: str | None,
    lost_create: LostCreate | None,
) -> tuple[Generation, bool]:
    fingerprint = plan_fingerprint(plan)
    if files.video.is_file() and files.sidecar.is_file():
        kept = Generation.model_validate_json(files.sidecar.read_text())
        if kept.metadata.get("plan_fingerprint") == fingerprint:
            return kept, False
        files.discard()
    pending = _read_json(files.prediction)
    kept_id = pending.get("prediction_id")
    local = kept_id if isinstance(kept_id, str) and pending.get("plan") == fingerprint else None
    # The work directory knows this machine's last attempt; the ledger knows every machine's.
    resume = local or adoptable
    files.video.parent.mkdir(parents=True, exist_ok=True)
    with slot():
        generation = provider.generate(
            plan,
            files.video,
            resume=resume,
            on_created=created,
            before_create=before_create,
            lost_create=lost_create,
        )
    generation.metadata["plan_fingerprint"] = fingerprint
    _write_json(files.sidecar, generation.model_dump(mode="json"))
    return generation, True


def _write_json(path: Path, data: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def _read_json(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _checked(plan: ClipPlan, files: ClipFiles) -> VideoInfo:
    """Probe the file and apply the acceptance rule. A rejected file is dropped so a retry regenerates."""
    try:
        info = probe(files.video)
        check_delivered(plan, info.duration, info.width, info.height)
    except MediaError as exc:
        files.discard()
        raise TransientError(f"clip {plan.clip_index} output is not a readable video: {exc}") from exc
    except GenerationError:
        files.discard()
        raise
    return info


def plan_fingerprint(plan: ClipPlan) -> str:
    """What the clip depends on; a rerun with other settings must not reuse it or adopt its predictions.

    Images count by content, not by path: the reference cache lives in each machine's data directory, and a
    run on another worker must recognise the same plan.
    """
    keys = {"model", "prompt", "negative_prompt", "aspect_ratio", "width", "height", "requested_duration"}
    digest = hashlib.sha256(plan.model_dump_json(include=keys).encode())
    for image in (plan.scene_image, *plan.character_images, *plan.object_images):
        if image:
            digest.update(_file_digest(Path(image)))
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=256)
def _file_digest(path: Path) -> bytes:
    # Cached per path: the same references are fingerprinted for every clip and attempt. Reference files are
    # content-addressed in the cache (a changed URL body gets a new path), so a path's content is stable.
    return hashlib.sha256(path.read_bytes()).digest()


def _already_stored(
    plan: ClipPlan, store: ClipStore, previous: ClipRecord | None, fingerprint: str
) -> Clip | None:
    """The clip as an earlier run stored it for this very plan, or None when it must be (re)generated."""
    if not (
        previous
        and previous.status == "success"
        and previous.video_path
        and previous.plan_fingerprint == fingerprint
        and previous.actual_duration is not None
    ):
        return None
    try:
        url = store.signed_url(VIDEO_BUCKET, previous.video_path)
    except (FileNotFoundError, PermanentError):
        log.warning("clip %d is on record but its file is gone; generating it again", plan.clip_index)
        return None
    return Clip(
        clip_index=plan.clip_index,
        video_url=url,
        actual_duration=previous.actual_duration,
        target_duration=plan.requested_duration,
        original_target_duration=plan.target_duration,
        duration_diff=round(previous.actual_duration - plan.target_duration, 3),
        status="success",
        cost=round(previous.cost, 4),
        retry_count=max(0, previous.attempts - 1),
        metadata=dict(plan.metadata),
        model=plan.model,
        prediction_id=previous.prediction_id,
        width=previous.width,
        height=previous.height,
        fps=previous.fps,
        storage_path=previous.video_path,
        reused=True,
    )


def _lost_create(
    previous: ClipRecord | None, fingerprint: str, job_ledger: list[PredictionRecord]
) -> LostCreate | None:
    """A create an earlier attempt sent for this plan whose prediction never reached the ledger. Every id
    the job's ledger has is excluded from the search: those belong to some clip already."""
    if previous is None or previous.create_sent_at is None or previous.plan_fingerprint != fingerprint:
        return None
    return LostCreate(previous.create_sent_at, frozenset(p.prediction_id for p in job_ledger))


def _adoptable(ledger: list[PredictionRecord], fingerprint: str) -> str | None:
    """The newest prediction made for this plan whose end we have not seen: adopt it rather than pay again."""
    open_ones = [p for p in ledger if p.status == "created" and p.plan_fingerprint == fingerprint]
    return open_ones[-1].prediction_id if open_ones else None


def _settle_prediction(
    store: ClipStore, job_id: UUID, prediction_id: str | None, status: PredictionStatus, error: str | None
) -> None:
    """Record how a ledger prediction ended. Best effort: the clip's own outcome must not hang on it."""
    if prediction_id is None:
        return
    try:
        known = next((p for p in store.predictions(job_id) if p.prediction_id == prediction_id), None)
        if known is not None and known.status != status:
            store.record_prediction(known.model_copy(update={"status": status, "error": error}))
    except Exception:
        log.warning("could not record that prediction %s is %s", prediction_id, status, exc_info=True)


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


def _clip_record(store: ClipStore, plan: ClipPlan) -> ClipRecord | None:
    return next((r for r in store.clip_records(plan.job_id) if r.clip_index == plan.clip_index), None)


def _record_failure(
    store: ClipStore, plan: ClipPlan, record: ClipRecord, attempt: Attempt, exc: Exception
) -> None:
    """Best effort: when the store is what failed, the original error must still be the one raised."""
    message = _describe(exc)
    retrying = attempt.retries_after(exc)
    try:
        store.upsert_clip(
            record.model_copy(update={"status": "running" if retrying else "failed", "error": message})
        )
        if retrying:
            delay = max(attempt.next_delay_s, getattr(exc, "retry_after", None) or 0.0)
            data = events.retry(plan.clip_index, attempt.number, delay, message)
            store.append_event(plan.job_id, events.RETRY, data)
    except Exception:
        log.warning("could not record the failed attempt of clip %d", plan.clip_index, exc_info=True)


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
