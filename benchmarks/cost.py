"""Cost: what the duration rule makes us pay for, and how the up-front estimate compares with the bill.

The job mix is the shipped example's targets (examples/job.json: 3 to 6 s). For every model in the catalog
the plan gives the requested seconds (the duration rule: next discrete duration, or target x buffer for
continuous models) against the target seconds, and the estimate the CLI prints. A model that needs a start
image gets a scene image on every clip. The real flow then runs the same job on the fake; the sum of its
per-clip costs (every paid prediction, retries included) is set against the estimate, without faults and
with one clip's first prediction failing (a retry the estimate cannot know of). Prices are the catalog's; a
model with no known price is reported as unknown (its estimate and bill are None), never as $0. The fake
bills nothing, so this checks our accounting, not Replicate's invoice. Deterministic: one run each.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import Any
from uuid import uuid4

from PIL import Image

from benchmarks.common import (
    check_delivered,
    clip_marker,
    environment,
    flow_environment,
    new_tag,
    options,
    run_flow,
)
from benchmarks.report import Figure, figure
from clipgen.catalog import MODELS
from clipgen.job import ClipPrompts, Clips
from clipgen.model_spec import ModelSpec
from clipgen.model_table import price_label
from clipgen.planning import JobPlan, plan_job
from clipgen.references import resolve_reference
from staging.fake_replicate.server import FakeReplicateServer, Fault

EXAMPLE_TARGETS_S = (4.5, 5.0, 5.5, 3.0, 4.0, 6.0)  # examples/job.json, in its order


def _scene_image() -> str:
    """A 1280x720 JPEG as a data: URI, for the models that need a start image."""
    image = Image.linear_gradient("L").resize((1280, 720)).convert("RGB")
    buffer = BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def mix_job(tag: str, spec: ModelSpec, targets: Sequence[float]) -> ClipPrompts:
    scene = _scene_image() if spec.requires_image else None
    prompts = [
        {
            "clip_index": i,
            "prompt": f"{clip_marker(tag, i)} a lantern swings in the wind, take {i}",
            "duration": target,
            "scene_reference_url": scene,
        }
        for i, target in enumerate(targets)
    ]
    return ClipPrompts.model_validate({"job_id": str(uuid4()), "clip_prompts": prompts})


def aspect_ratio(spec: ModelSpec) -> str:
    return "16:9" if "16:9" in spec.aspect_ratios else spec.aspect_ratios[0]


def plan_for(spec: ModelSpec, job: ClipPrompts, cache_dir: Path) -> JobPlan:
    resolve = functools.partial(resolve_reference, cache_dir=cache_dir)
    return plan_job(job, options(model=spec.key, aspect_ratio=aspect_ratio(spec)), resolve)


def planned_row(spec: ModelSpec, plan: JobPlan) -> dict[str, Any]:
    """The plan's seconds and estimate; the money is None when the model's price is unknown (not $0)."""
    target = sum(clip.target_duration for clip in plan.clips)
    requested = sum(clip.requested_duration for clip in plan.clips)
    # What the rule's extra seconds cost: nothing for a per-run price, price x extra seconds otherwise.
    beyond = sum(max(0.0, clip.estimated_cost - spec.cost(clip.target_duration)) for clip in plan.clips)
    return {
        "model": spec.key,
        "price": price_label(spec),
        "price_known": plan.price_known,
        "scene_image": any(clip.scene_image for clip in plan.clips),
        "clips": len(plan.clips),
        "target_s": target,
        "requested_s": requested,
        "requested_per_target": requested / target,
        "paid_beyond_target_usd": round(beyond, 4) if plan.price_known else None,
        "estimate_usd": plan.estimated_cost if plan.price_known else None,
        "flow": None,
    }


def flow_costs(
    fake: FakeReplicateServer, data_dir: Path, spec: ModelSpec, estimate: float | None, fail_first: bool
) -> dict[str, Any]:
    """Run the mix through the real flow; its bill (sum of per-clip costs) against the estimate (None, and
    no bill, when the price is unknown: the clips are booked at $0)."""
    tag = new_tag()
    job = mix_job(tag, spec, EXAMPLE_TARGETS_S)
    if fail_first:
        fake.add_fault(Fault(kind="fail", match=clip_marker(tag, 0), error="GPU worker lost"))
    with environment(flow_environment(fake, data_dir)):
        run = run_flow(job, options(model=spec.key, aspect_ratio=aspect_ratio(spec)))
    check_delivered(run, len(job.clip_prompts))
    result: Clips = run.result
    delivered = sum(clip.actual_duration or 0.0 for clip in result.clips)
    return {
        "total_cost_usd": result.total_cost if estimate is not None else None,
        "total_per_estimate": result.total_cost / estimate if estimate else None,
        "delivered_s": delivered,
        "retries": sum(clip.retry_count for clip in result.clips),
    }


def measure_cost(
    fake: FakeReplicateServer, root: Path, run_models: Sequence[str], main_model: str
) -> tuple[list[Figure], list[dict[str, Any]]]:
    """Figures for `main_model`, and a row per model (with a flow run for `main_model` and `run_models`)."""
    rows = []
    retried: dict[str, Any] | None = None
    for spec in MODELS.values():
        job = mix_job(new_tag(), spec, EXAMPLE_TARGETS_S)
        plan = plan_for(spec, job, root / "references")
        row = planned_row(spec, plan)
        estimate = row["estimate_usd"]
        if spec.key in run_models or spec.key == main_model:
            row["flow"] = flow_costs(fake, root / "data", spec, estimate, fail_first=False)
        if spec.key == main_model:
            retried = flow_costs(fake, root / "data", spec, estimate, fail_first=True)
        rows.append(row)
    main = next(row for row in rows if row["model"] == main_model)
    assert main["flow"] is not None and retried is not None  # the main model always runs
    mix = f"{main_model}, the example job's 6 targets ({sum(EXAMPLE_TARGETS_S):g} s)"
    figures = [
        figure(
            "requested_per_target",
            "Requested / target seconds",
            "×",
            [main["requested_per_target"]],
            how=f"{mix}; every model in the cost table",
        ),
        figure(
            "cost_per_estimate",
            "Sum of clip costs / estimate, no retries",
            "×",
            [main["flow"]["total_per_estimate"]],
            how=f"{mix}; real flow on the fake",
        ),
        figure(
            "cost_per_estimate_one_retry",
            "Sum of clip costs / estimate, one clip retried",
            "×",
            [retried["total_per_estimate"]],
            how="the same, clip 0's first prediction fails ('GPU worker lost') and is paid again",
            detail=retried,
        ),
    ]
    return figures, rows
