"""Progress event names and payloads (listed in docs/watching.md). Stored in job_events, streamed over SSE.

`completed` counts clips that succeeded so far and `failed` those that failed; `completed + failed` of
`total` have finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clipgen.job import Clip, Clips
from clipgen.planning import JobPlan

START = "video_generation_start"
PROGRESS = "video_generation_progress"
RETRY = "video_generation_retry"
THUMBNAIL_READY = "clip_thumbnail_ready"
COMPLETE = "video_generation_complete"
FAILED = "video_generation_failed"
FINAL_EVENTS = (COMPLETE, FAILED)


def start(plan: JobPlan) -> dict[str, Any]:
    return {
        "total_clips": len(plan.clips),
        "model": plan.model,
        "aspect_ratio": plan.aspect_ratio,
        "estimated_cost": plan.estimated_cost,
        "budget_usd": plan.budget_usd,
        "clip_indices": [clip.clip_index for clip in plan.clips],
    }


@dataclass
class Tally:
    """Running counts for progress events and the progress artifact."""

    total: int
    completed: int = 0
    failed: int = 0

    @property
    def finished(self) -> int:
        return self.completed + self.failed

    @property
    def percent(self) -> float:
        return round(100.0 * self.finished / self.total, 1) if self.total else 100.0

    def add(self, clip: Clip) -> None:
        if clip.status == "success":
            self.completed += 1
        else:
            self.failed += 1


def progress(clip: Clip, tally: Tally) -> dict[str, Any]:
    data: dict[str, Any] = {
        "clip_index": clip.clip_index,
        "status": clip.status,
        "completed": tally.completed,
        "failed": tally.failed,
        "total": tally.total,
    }
    if clip.status == "success":
        data |= {"video_url": clip.video_url, "actual_duration": clip.actual_duration, "cost": clip.cost}
        data["reused"] = clip.reused  # stored by an earlier run of the job: nothing was paid for it now
    else:
        data |= {"error": clip.error, "cost": clip.cost}
    return data


def retry(clip_index: int, attempt: int, delay_seconds: float, error: str) -> dict[str, Any]:
    return {"clip_index": clip_index, "attempt": attempt, "delay_seconds": delay_seconds, "error": error}


def thumbnail_ready(clip_index: int, thumbnail_url: str) -> dict[str, Any]:
    return {"clip_index": clip_index, "thumbnail_url": thumbnail_url}


def complete(result: Clips) -> dict[str, Any]:
    return {
        "successful_clips": result.successful_clips,
        "failed_clips": result.failed_clips,
        "total_cost": result.total_cost,
    }


def failed(result: Clips, min_success: int, errors: list[str]) -> dict[str, Any]:
    return {"successful_clips": result.successful_clips, "min_success": min_success, "errors": errors}
