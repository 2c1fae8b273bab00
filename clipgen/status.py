"""A job's state as people and apps see it, derived from its event log and records. Pure: links come
from a callback, so the server decides how a private object is reached (signed Storage link or its own)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, Field

from clipgen import events
from clipgen.stores.base import THUMBNAIL_BUCKET, VIDEO_BUCKET, ClipRecord, StoredEvent, ThumbnailRecord

Link = Callable[[str, str], str]
"""(bucket, object path) -> a URL that can be opened now."""

JobState = Literal["running", "completed", "failed"]
ClipState = Literal["pending", "running", "success", "failed"]


class ClipView(BaseModel):
    clip_index: int
    status: ClipState
    attempts: int = 0
    retries: int = 0
    target_duration: float | None = None
    requested_duration: float | None = None
    actual_duration: float | None = None
    width: int | None = None
    height: int | None = None
    cost: float = 0.0
    error: str | None = None
    video_url: str | None = None
    thumbnail_url: str | None = None


class JobView(BaseModel):
    job_id: UUID
    state: JobState
    model: str | None = None
    aspect_ratio: str | None = None
    total_clips: int = 0
    completed: int = Field(0, description="Clips that succeeded so far.")
    failed: int = Field(0, description="Clips that failed so far.")
    estimated_cost: float | None = None
    total_cost: float = 0.0
    last_event_id: int = 0
    clips: list[ClipView] = Field(default_factory=list)


def is_finished(log: Sequence[StoredEvent]) -> bool:
    """A job is over when its latest event is final (a rerun appends a new start after an old end)."""
    return bool(log) and log[-1].event in events.FINAL_EVENTS


def job_view(
    job_id: UUID,
    log: Sequence[StoredEvent],
    records: Sequence[ClipRecord],
    thumbnails: Sequence[ThumbnailRecord],
    link: Link,
) -> JobView | None:
    """None when nothing is known of the job."""
    if not log:
        return None
    run = _latest_run(log)
    start = next((e.data for e in run if e.event == events.START), {})
    progress = [e.data for e in run if e.event == events.PROGRESS]
    thumbs = {t.clip_index: t for t in thumbnails}
    by_index = {r.clip_index: r for r in records}
    indices = sorted(set(start.get("clip_indices", [])) | set(by_index))
    clips = [_clip(i, by_index.get(i), thumbs.get(i), link) for i in indices]
    state: JobState = "running"
    if is_finished(log):
        state = "completed" if log[-1].event == events.COMPLETE else "failed"
    return JobView(
        job_id=job_id,
        state=state,
        model=start.get("model"),
        aspect_ratio=start.get("aspect_ratio"),
        total_clips=int(start.get("total_clips", len(indices))),
        completed=progress[-1]["completed"] if progress else 0,
        failed=progress[-1]["failed"] if progress else 0,
        estimated_cost=start.get("estimated_cost"),
        total_cost=round(sum(c.cost for c in clips), 4),
        last_event_id=log[-1].id,
        clips=clips,
    )


def linked_event_data(
    data: dict[str, Any],
    records: Sequence[ClipRecord],
    thumbnails: Sequence[ThumbnailRecord],
    link: Link,
) -> dict[str, Any]:
    """An event's data with its object URLs replaced by links that open now (the log keeps what the flow
    saw: a local store's file:// path, or a Storage link signed then). A URL whose object is not recorded
    is dropped rather than passed on."""
    index = data.get("clip_index")
    linked = dict(data)
    if "video_url" in data:
        record = next((r for r in records if r.clip_index == index and r.video_path), None)
        linked["video_url"] = link(VIDEO_BUCKET, record.video_path) if record and record.video_path else None
    if "thumbnail_url" in data:
        thumbnail = next((t for t in thumbnails if t.clip_index == index), None)
        linked["thumbnail_url"] = link(THUMBNAIL_BUCKET, thumbnail.thumbnail_path) if thumbnail else None
    return linked


def _latest_run(log: Sequence[StoredEvent]) -> Sequence[StoredEvent]:
    starts = [i for i, e in enumerate(log) if e.event == events.START]
    return log[starts[-1] :] if starts else log


def _clip(index: int, record: ClipRecord | None, thumbnail: ThumbnailRecord | None, link: Link) -> ClipView:
    if record is None:
        return ClipView(clip_index=index, status="pending")
    fields: dict[str, Any] = record.model_dump(
        include={
            "status",
            "attempts",
            "target_duration",
            "requested_duration",
            "actual_duration",
            "width",
            "height",
            "cost",
            "error",
        }
    )
    return ClipView(
        clip_index=index,
        retries=max(0, record.attempts - 1),
        video_url=link(VIDEO_BUCKET, record.video_path)
        if record.status == "success" and record.video_path
        else None,
        thumbnail_url=link(THUMBNAIL_BUCKET, thumbnail.thumbnail_path) if thumbnail else None,
        **fields,
    )
