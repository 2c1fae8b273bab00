"""From a job and its options to a checked plan: durations, shapes, images, cost. Pure except `resolve`.

Every problem with a job is found here, before any clip task runs, so a bad job costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import pydantic
from pydantic import BaseModel, Field

from clipgen.catalog import MODELS, spec_for
from clipgen.errors import ClipShapeMismatch, ClipTooShort, Problem, ValidationError
from clipgen.job import ClipPrompt, ClipPrompts, GenerationOptions
from clipgen.media import matches_aspect
from clipgen.model_inputs import request_problems
from clipgen.model_schema import InputSchema
from clipgen.model_spec import ModelSpec, UnusableModel

ACCEPT_SHORTFALL_S = 2.0
"""A clip is accepted when it is at least this much shorter than the prompt's target, or longer."""
ASPECT_TOLERANCE = 0.02

Resolver = Callable[[str, str], Path]
"""(reference, field) -> local path of a verified image; raises ValidationError naming the field."""


class ClipPlan(BaseModel):
    """Everything one clip task needs; JSON-serialisable so Prefect can show it as the task's input."""

    job_id: UUID
    clip_index: int
    model: str
    prompt: str
    negative_prompt: str = ""
    aspect_ratio: str
    width: int
    height: int
    target_duration: float = Field(description="The prompt's target (original_target_duration).")
    requested_duration: float = Field(description="What is asked of the model, after the buffer.")
    timeout_s: float
    estimated_cost: float
    scene_image: str | None = Field(None, description="Local path of the verified scene image.")
    character_images: list[str] = Field(default_factory=list)
    object_images: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    model_schema: dict[str, Any] | None = Field(
        None, description="The input schema of a model outside the catalog, as planned with."
    )

    @property
    def min_duration(self) -> float:
        return max(0.0, self.target_duration - ACCEPT_SHORTFALL_S)


class JobPlan(BaseModel):
    job_id: UUID
    model: str
    aspect_ratio: str
    clips: list[ClipPlan]
    min_success: int = Field(description="Successes needed: options.min_success capped at the clip count.")
    concurrency: int
    estimated_cost: float
    price_known: bool = Field(True, description="False when the model has no known price (estimate $0).")
    budget_usd: float | None = Field(
        None, description="No paid request once spent + committed would pass it."
    )


def requested_duration(spec: ModelSpec, target: float, buffer: float) -> float:
    """Discrete: the smallest duration >= target, else the largest. Continuous: target x buffer, clamped."""
    if spec.durations:
        return next((d for d in spec.durations if d >= target), spec.durations[-1])
    assert spec.duration_range is not None
    low, high = spec.duration_range
    return min(max(round(target * buffer, 3), low), high)


def model_spec(options: GenerationOptions, schema: InputSchema | None = None) -> ModelSpec:
    """The spec for `options.model`: a catalog key, or `owner/name` with its published `schema`.
    ValidationError naming options.model when neither fits."""
    if options.model in MODELS:
        return MODELS[options.model]
    if schema is None or schema.model != options.model:
        raise ValidationError.one(
            "options.model",
            f"unknown model {options.model!r}; choose one of: {', '.join(MODELS)}, or any Replicate video "
            "model as owner/name",
        )
    try:
        return spec_for(schema.model, schema.as_json())
    except UnusableModel as exc:
        raise ValidationError.one("options.model", f"{exc}; it cannot be planned safely") from exc


def option_problems(options: GenerationOptions, spec: ModelSpec) -> list[Problem]:
    if options.budget_usd is not None and not spec.price_known and options.price_per_second_usd is None:
        return [
            Problem(
                "options.budget_usd",
                f"{spec.key} has no known price, so a budget cannot be kept; give "
                "options.price_per_second_usd (what the model costs per second), or leave the budget out",
            )
        ]
    if options.aspect_ratio not in spec.aspect_ratios:
        return [
            Problem(
                "options.aspect_ratio",
                f"{options.aspect_ratio} is not supported by {spec.key}; "
                f"supported: {', '.join(spec.aspect_ratios)} ({_why_these_ratios(spec)})",
            )
        ]
    return []


def _why_these_ratios(spec: ModelSpec) -> str:
    if spec.aspect_via == "input":
        return "its aspect_ratio input offers no others"
    if spec.aspect_via == "image":
        return "its output follows the start image, and the model is made for these"
    width, height = spec.output_sizes[spec.aspect_ratios[0]]
    return f"it makes {width}x{height} clips only"


def clip_problems(position: int, prompt: ClipPrompt, spec: ModelSpec, aspect_ratio: str) -> list[Problem]:
    """What stops `spec` from delivering this clip; found before any request."""
    where = f"clip_prompts[{position}]"
    problems: list[Problem] = []
    longest = spec.max_duration
    if longest < prompt.duration - ACCEPT_SHORTFALL_S:
        problems.append(
            Problem(
                f"{where}.duration",
                f"{prompt.duration:g} s cannot be met by {spec.key}: its longest clip is {longest:g} s and a "
                f"clip is accepted from {ACCEPT_SHORTFALL_S:g} s under target; use at most "
                f"{longest + ACCEPT_SHORTFALL_S:g} s",
            )
        )
    if prompt.negative_prompt.strip() and not spec.takes_negative_prompt:
        problems.append(
            Problem(
                f"{where}.negative_prompt",
                f"{spec.key} has no negative prompt; leave it empty or choose another model",
            )
        )
    if prompt.scene_reference_url is not None and not spec.in_catalog and not spec.roles.first_image:
        problems.append(
            Problem(
                f"{where}.scene_reference_url",
                f"{spec.key} takes no start image (its inputs: {', '.join(spec.schema.properties)}); "
                "leave it out or choose another model",
            )
        )
    if prompt.scene_reference_url is None:
        if spec.requires_image:
            problems.append(
                Problem(
                    f"{where}.scene_reference_url",
                    f"{spec.key} needs a scene reference image and clip_index {prompt.clip_index} has none",
                )
            )
        elif aspect_ratio not in spec.text_aspect_ratios:
            problems.append(
                Problem(
                    f"{where}.scene_reference_url",
                    f"{spec.key} makes {aspect_ratio} only from a scene image and clip_index "
                    f"{prompt.clip_index} has none (without one: {', '.join(spec.text_aspect_ratios)})",
                )
            )
    return problems


def plan_job(
    job: ClipPrompts, options: GenerationOptions, resolve: Resolver, schema: InputSchema | None = None
) -> JobPlan:
    """Check the whole job and build its plan, or raise ValidationError listing every problem. `schema` is
    the published input schema of a model outside the catalog (`options.model` = owner/name)."""
    spec = model_spec(options, schema)
    problems = option_problems(options, spec)
    if problems:
        raise ValidationError(problems)
    for position, prompt in enumerate(job.clip_prompts):
        problems += clip_problems(position, prompt, spec, options.aspect_ratio)
    if problems:
        raise ValidationError(problems)

    clips: list[ClipPlan] = []
    resolved: dict[str, str | None] = {}  # shared by the clips: each distinct reference is resolved once
    for position, prompt in enumerate(job.clip_prompts):
        images, image_problems = _resolve_images(position, prompt, resolve, resolved)
        problems += image_problems
        clips.append(_clip_plan(job, prompt, spec, options, images))
        if not problems:
            problems += request_problems(clips[-1], position)
    estimate = round(sum(clip.estimated_cost for clip in clips), 4)
    if options.budget_usd is not None and estimate > options.budget_usd:
        problems.append(
            Problem(
                "options.budget_usd",
                f"the estimate ${estimate:.2f} exceeds the budget ${options.budget_usd:.2f}",
            )
        )
    if problems:
        raise ValidationError(problems)
    return JobPlan(
        job_id=job.job_id,
        model=spec.key,
        aspect_ratio=options.aspect_ratio,
        clips=clips,
        min_success=min(options.min_success, len(clips)),
        concurrency=options.concurrency,
        estimated_cost=estimate,
        price_known=spec.price_known or options.price_per_second_usd is not None,
        budget_usd=options.budget_usd,
    )


def _clip_plan(
    job: ClipPrompts, prompt: ClipPrompt, spec: ModelSpec, options: GenerationOptions, images: dict[str, Any]
) -> ClipPlan:
    seconds = requested_duration(spec, prompt.duration, options.duration_buffer)
    width, height = spec.output_sizes[options.aspect_ratio]
    return ClipPlan(
        job_id=job.job_id,
        clip_index=prompt.clip_index,
        model=spec.key,
        prompt=prompt.prompt,
        negative_prompt=prompt.negative_prompt,
        aspect_ratio=options.aspect_ratio,
        width=width,
        height=height,
        target_duration=prompt.duration,
        requested_duration=seconds,
        timeout_s=options.clip_timeout_s or spec.timeout_s,
        estimated_cost=spec.cost(seconds, options.price_per_second_usd),
        metadata=prompt.metadata,
        model_schema=None if spec.in_catalog else spec.schema.as_json(),
        **images,
    )


def _resolve_images(
    position: int, prompt: ClipPrompt, resolve: Resolver, resolved: dict[str, str | None]
) -> tuple[dict[str, Any], list[Problem]]:
    """The clip's images as local paths. `resolved` (reference -> path, None if refused) spans the job."""
    where = f"clip_prompts[{position}]"
    problems: list[Problem] = []

    def one(ref: str, field: str) -> str | None:
        # Once per job, not per use: resolving revalidates a URL over the network and may decode the image,
        # so 20 clips sharing a scene make one request. A refused reference is reported once, for the first
        # field that used it.
        if ref not in resolved:
            try:
                resolved[ref] = str(resolve(ref, field))
            except ValidationError as exc:
                problems.extend(exc.problems)
                resolved[ref] = None
        return resolved[ref]

    scene = (
        one(prompt.scene_reference_url, f"{where}.scene_reference_url")
        if prompt.scene_reference_url
        else None
    )
    characters = [
        one(ref, f"{where}.character_reference_urls[{i}]")
        for i, ref in enumerate(prompt.character_reference_urls)
    ]
    objects = [
        one(ref, f"{where}.object_reference_urls[{i}]") for i, ref in enumerate(prompt.object_reference_urls)
    ]
    images = {
        "scene_image": scene,
        "character_images": [path for path in characters if path],
        "object_images": [path for path in objects if path],
    }
    return images, problems


def check_delivered(plan: ClipPlan, duration: float, width: int, height: int) -> None:
    """The acceptance rule for a returned clip: long enough, and the shape that was asked for."""
    if duration < plan.min_duration:
        raise ClipTooShort(
            f"clip {plan.clip_index} is {duration:.2f} s; needs at least {plan.min_duration:.2f} s "
            f"(target {plan.target_duration:g} s - {ACCEPT_SHORTFALL_S:g} s)"
        )
    if not matches_aspect(width, height, plan.aspect_ratio, ASPECT_TOLERANCE):
        raise ClipShapeMismatch(f"clip {plan.clip_index} is {width}x{height}, not {plan.aspect_ratio}")


def pydantic_problems(exc: pydantic.ValidationError, prefix: str = "") -> list[Problem]:
    """Pydantic's errors as Problems with JSON-path field names, e.g. clip_prompts[2].duration."""
    problems = []
    for error in exc.errors():
        path = prefix
        for part in error["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        message = error["msg"]
        allowed = (error.get("ctx") or {}).get("expected")
        if allowed:
            message += f" (allowed: {allowed})"
        problems.append(Problem(path or "job", message))
    return problems
