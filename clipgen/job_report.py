"""What a job reports as its clips finish: the start, progress and end events in the job's log, whether
enough clips succeeded (partial success), and the table of its clips. The flow calls these; their events'
names and payloads are clipgen.events'.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clipgen import events
from clipgen.job import Clip, Clips
from clipgen.planning import JobPlan
from clipgen.stores.base import ClipStore

ERRORS_IN_SUMMARY = 3


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
