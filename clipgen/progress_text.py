"""The lines `video-generator run` and `submit` print: the job's start (or queued) line with its estimate,
one per progress or retry event as the clips finish, and the summary of the result. Plain text from plain
data; the command prints them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clipgen import events
from clipgen.job import Clips
from clipgen.planning import JobPlan


def unknown_estimate(plan: JobPlan) -> str | None:
    """For a model with no published price (and no --price-per-second): that the estimate is unknown, in
    place of a $0.00 that would read as free."""
    return None if plan.price_known else f"estimate unknown (no published price for {plan.model})"


def start_line(plan: JobPlan, provider: str, store: str) -> str:
    """The line `run` prints before the flow starts. A local preview is free; its estimate is what the same
    job would cost on Replicate."""
    local = provider == "local"
    unknown = unknown_estimate(plan)
    if unknown:
        cost = f"free local preview; on Replicate: {unknown}" if local else unknown
    else:
        cost = f"{'free local preview' if local else 'estimate'} (on Replicate ${plan.estimated_cost:.2f})"
    return (
        f"job {plan.job_id}: {len(plan.clips)} clips · {plan.model} {plan.aspect_ratio} · "
        f"provider {provider} · store {store} · {cost}"
    )


def queued_line(plan: JobPlan, store: str, max_attempts: int) -> str:
    """The line `submit` prints once the job is in the queue."""
    return (
        f"queued job {plan.job_id}: {len(plan.clips)} clips · {plan.model} {plan.aspect_ratio} · "
        f"store {store} · up to {max_attempts} runs · "
        f"{unknown_estimate(plan) or f'estimate on Replicate ${plan.estimated_cost:.2f}'}"
    )


def event_line(name: str, data: dict[str, Any]) -> str | None:
    """The line for a store event, or None for an event the command does not show."""
    if name == events.PROGRESS:
        done = f"[{data['completed'] + data['failed']}/{data['total']}] clip {data['clip_index']}"
        if data["status"] != "success":
            return f"  {done} FAILED: {data.get('error')}"
        if data.get("reused"):
            return f"  {done} reused: {data['actual_duration']:.2f} s, stored by an earlier run"
        cost = data.get("cost") or 0.0
        return f"  {done} ok: {data['actual_duration']:.2f} s" + (f" · ${cost:.2f}" if cost else "")
    if name == events.RETRY:
        return (
            f"  clip {data['clip_index']}: attempt {data['attempt']} failed ({data['error']}); "
            f"retrying in ~{data['delay_seconds']:.0f} s"
        )
    return None


def summary_lines(
    result: Clips, completed: bool, message: str, output: Path | None, price_known: bool = True
) -> list[str]:
    """The run's outcome, one line per clip, what was paid, and where the result was written. Without a
    known price the amounts are not shown as $0.00: the model's bill is Replicate's to tell."""

    def usd(amount: float) -> str:
        return f"${amount:.2f}" if price_known else "an unknown amount"

    reused = sum(clip.reused for clip in result.clips)
    made = sum(clip.status == "success" and not clip.reused for clip in result.clips)
    if reused and not made:
        message += " · all reused from earlier runs, none generated now"
    elif reused:
        message += f" · {reused} reused from earlier runs"
    lines = [f"{'Completed' if completed else 'Failed'}: {message}"]
    for clip in result.clips:
        if clip.status == "success":
            seconds = f"{clip.actual_duration:.2f} s (target {clip.original_target_duration:g} s)"
            shape = f"{clip.width}x{clip.height}"
            note = "  (reused)" if clip.reused else ""
            lines.append(
                f"  clip {clip.clip_index}: {seconds} {shape} {usd(clip.cost)}  {clip.video_url}{note}"
            )
        else:
            lines.append(
                f"  clip {clip.clip_index}: failed after {clip.retry_count + 1} attempt(s): {clip.error}"
            )
    lines.append(
        f"  this run: {made} generated, {reused} reused, paid {usd(result.spent_this_run)} · all runs paid "
        f"{usd(result.spent_all_runs)} · the clips cost {usd(result.total_cost)} · "
        f"{result.total_generation_time:.1f} s"
    )
    if output:
        lines.append(f"  result written to {output}")
    return lines


def indented(text: str) -> str:
    """`text` with each line indented by two spaces, as the command shows a refusal's problems."""
    return "\n".join(f"  {line}" for line in text.splitlines())
