"""The job (input) and the result (output), JSON-compatible with the existing pipeline.

Unknown extra fields in a job are ignored, so an upstream that adds fields does not break us.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from uuid import UUID

import pydantic
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from clipgen.catalog import MODELS
from clipgen.errors import ValidationError
from clipgen.reference_objects import STORE_PREFIX, is_store_reference, parse_store_reference
from clipgen.run_form import (
    ASPECT_RATIO_CHOICES,
    ASPECT_RATIO_HELP,
    MODEL_HELP,
    branch_titles,
    catalog_or_any_model,
    in_declared_order,
)
from clipgen.stores.base import REFERENCE_BUCKET

MAX_TARGET_SECONDS = 60.0
MAX_CLIP_INDEX = 2**31 - 1
"""clip_index is a PostgreSQL `integer` in the Supabase tables (SQLite's limit is higher)."""


def _text_problem(value: str) -> str | None:
    """Why `value` cannot be stored or sent as text, or None. JSON's \\ud800 escapes decode to unpaired
    surrogates, which no UTF-8 encoder (the Prefect API, the stores, Replicate) accepts; PostgreSQL refuses
    NUL in text and jsonb."""
    if "\x00" in value:
        return "must not contain NUL characters (\\u0000)"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"must be valid Unicode text; it has an unpaired surrogate {value[exc.start]!r}"
    return None


def _text(value: str) -> str:
    problem = _text_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _reference(value: str) -> str:
    """A reference image: an http(s) URL, a data: URI, a store:// reference (checked here, so the UI and the
    API refuse a malformed one at once), or a path that only the CLI reads (the flow refuses it)."""
    _text(value)
    try:
        urlsplit(value)
    except ValueError as exc:
        raise ValueError(f"not a URL, data: URI, store:// reference or path ({exc})") from None
    if is_store_reference(value):
        try:
            parse_store_reference(value, "")
        except ValidationError as exc:
            raise ValueError(exc.problems[0].message) from None
    return value


_REFERENCE_HELP = (
    "an http(s) URL of a public image; a data: URI (data:image/png;base64,...), for small images only, since "
    "the job travels in the run's parameters (at most 512 KB in all); or "
    f"{STORE_PREFIX}sha256/<hex>.<ext>, an image in the store's private {REFERENCE_BUCKET} bucket, which is "
    "what the video-generator command (run, submit) turns a job file's image paths into after uploading them"
)


def _json_text_problem(value: Any, where: str = "") -> str | None:
    """The first string (key or value) in a JSON structure that `_text_problem` refuses, with where it is."""
    if isinstance(value, str):
        problem = _text_problem(value)
        return f"{where or 'value'} {problem}" if problem else None
    items: list[tuple[Any, Any]] = []
    if isinstance(value, dict):
        items = list(value.items())
        for key in value:
            problem = _text_problem(key) if isinstance(key, str) else None
            if problem:
                return f"key {key!r} {problem}"
    elif isinstance(value, list | tuple):
        items = list(enumerate(value))
    for key, item in items:
        problem = _json_text_problem(item, f"{where}[{key!r}]")
        if problem:
            return problem
    return None


Text = Annotated[str, AfterValidator(_text)]
Reference = Annotated[str, AfterValidator(_reference)]


class ClipPrompt(BaseModel):
    """One clip to generate."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, json_schema_extra=in_declared_order)

    clip_index: int = Field(
        ge=0, le=MAX_CLIP_INDEX, description="Position of the clip in the job; unique within the job."
    )
    prompt: Text = Field(description="What the clip shows.")
    negative_prompt: Text = Field("", description="What the clip should not show (may be empty).")
    duration: float = Field(
        gt=0, le=MAX_TARGET_SECONDS, description="Target duration in seconds (before any buffer)."
    )
    scene_reference_url: str | None = Field(
        None, description=f"Scene image, the start frame where possible: {_REFERENCE_HELP}."
    )
    character_reference_urls: list[Reference] = Field(
        default_factory=list, description=f"Character images, each {_REFERENCE_HELP}."
    )
    object_reference_urls: list[Reference] = Field(
        default_factory=list, description=f"Object images, each {_REFERENCE_HELP}."
    )
    metadata: dict[str, Any] = Field(default_factory=dict, description="Carried through to the clip.")

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("scene_reference_url")
    @classmethod
    def _blank_url_is_none(cls, value: str | None) -> str | None:
        # The existing pipeline sends "" for "no scene image".
        return _reference(value) if value and value.strip() else None

    @field_validator("metadata")
    @classmethod
    def _metadata_is_text(cls, value: dict[str, Any]) -> dict[str, Any]:
        problem = _json_text_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class ClipPrompts(BaseModel):
    """One job: the clips to generate, all with the same model and aspect ratio."""

    model_config = ConfigDict(extra="ignore", json_schema_extra=in_declared_order)

    job_id: UUID = Field(
        description="Any UUID that names the job; running the same id again reuses the clips it has."
    )
    clip_prompts: list[ClipPrompt] = Field(
        min_length=1,
        description='One entry per clip. To paste them all as JSON, choose "Use JSON input" in this '
        "field's menu (or in the job's, for the whole job).",
    )
    total_clips: int | None = Field(
        None,
        description="Number of clips; must match clip_prompts if given.",
        json_schema_extra=branch_titles(integer="Number", null="Count them"),
    )
    generation_time: float | str | None = Field(
        None,
        description="Carried through from the upstream step.",
        json_schema_extra=branch_titles(number="Number", string="Text", null="None"),
    )

    # Each rule is checked on its own field, so a refusal names that field (not the whole job).
    @field_validator("clip_prompts")
    @classmethod
    def _unique_indexes(cls, prompts: list[ClipPrompt]) -> list[ClipPrompt]:
        first: dict[int, int] = {}
        for position, prompt in enumerate(prompts):
            if prompt.clip_index in first:
                raise ValueError(
                    f"clip_index {prompt.clip_index} appears more than once "
                    f"(clip_prompts[{first[prompt.clip_index]}] and clip_prompts[{position}])"
                )
            first[prompt.clip_index] = position
        return prompts

    @field_validator("total_clips")
    @classmethod
    def _total_matches(cls, total: int | None, info: ValidationInfo) -> int | None:
        prompts = info.data.get("clip_prompts")  # absent when clip_prompts itself was refused
        if total is not None and prompts is not None and total != len(prompts):
            raise ValueError(f"total_clips is {total} but clip_prompts has {len(prompts)} entries")
        return total

    @field_validator("generation_time", mode="wrap")
    @classmethod
    def _one_generation_time_error(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        # A failed union reports once per member ("generation_time.float", "generation_time.str").
        try:
            checked = handler(value)
        except pydantic.ValidationError:
            raise ValueError("must be a number, a string or null") from None
        return _text(checked) if isinstance(checked, str) else checked

    @model_validator(mode="after")
    def _default_total(self) -> ClipPrompts:
        if self.total_clips is None:
            self.total_clips = len(self.clip_prompts)
        return self


class GenerationOptions(BaseModel):
    """How to generate a job.

    The defaults below are the built-in ones. A run takes the worker's VIDEO_GENERATOR_* settings for every
    option its caller did not set (`run_parameters.options_for_run`); options given are used as given.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, json_schema_extra=in_declared_order)

    # The JSON schema lists the choices (the Prefect UI shows them as selects; `model` also takes owner/name
    # as free text); Python callers get the same check from the plan, which names the field and the choices.
    model: str = Field("kling-v2.5-turbo", description=MODEL_HELP, json_schema_extra=catalog_or_any_model)
    aspect_ratio: str = Field(
        "16:9",
        pattern=r"^\d{1,2}:\d{1,2}$",
        description=ASPECT_RATIO_HELP,
        json_schema_extra={"enum": list(ASPECT_RATIO_CHOICES)},
    )
    concurrency: int = Field(
        5, ge=1, le=50, description="Clips generated at once (worker setting VIDEO_GENERATOR_CONCURRENCY)."
    )
    min_success: int = Field(
        3,
        ge=1,
        description="Clips needed for the run to succeed; capped at the number of clips (worker setting "
        "VIDEO_GENERATOR_MIN_CLIPS).",
    )
    clip_timeout_s: float | None = Field(
        None,
        gt=0,
        le=3600,
        description="Per-clip deadline in seconds, or the model's own (120 s for most; worker setting "
        "VIDEO_GENERATOR_CLIP_TIMEOUT_SECONDS).",
        title="Clip Timeout (s)",
        json_schema_extra=branch_titles(number="Seconds", null="Model's own"),
    )
    duration_buffer: float = Field(
        1.25,
        ge=1.0,
        le=2.0,
        description="Multiplier on the target duration for continuous-duration models (worker setting "
        "VIDEO_GENERATOR_DURATION_BUFFER).",
    )
    budget_usd: float | None = Field(
        None,
        gt=0,
        description="Refuse jobs whose estimate exceeds this, and create no paid request once every run's "
        "spend on the job plus the request would pass it.",
        title="Budget (USD)",
        json_schema_extra=branch_titles(number="USD", null="No budget"),
    )
    price_per_second_usd: float | None = Field(
        None,
        gt=0,
        le=10,
        description="What a model with no known price costs per second of video; a budget needs it for such "
        "a model (`owner/name` models and the catalog models marked price unknown).",
        title="Price per second (USD)",
        json_schema_extra=branch_titles(number="USD", null="Known price"),
    )
    retry_failed: bool = Field(
        False,
        description="Pay again for clips that failed for good in an earlier run of the same plan (content "
        "rejected, wrong shape); without it they are reported failed again at no cost.",
    )

    @model_validator(mode="after")
    def _model_default_ratio(self) -> GenerationOptions:
        # 16:9 is the default where the model offers it; a model that makes one shape only (CogVideoX:
        # 3:2) gets that shape unless the caller asked for another, which the plan then refuses.
        spec = MODELS.get(self.model)
        chosen = "aspect_ratio" in self.model_fields_set
        if spec and not chosen and self.aspect_ratio not in spec.aspect_ratios:
            self.aspect_ratio = spec.aspect_ratios[0]
        return self


ClipOutcome = Literal["success", "failed"]


class Clip(BaseModel):
    """One generated clip, or the record of its failure."""

    clip_index: int
    video_url: str | None = None
    actual_duration: float | None = Field(None, description="Probed from the file, never guessed.")
    target_duration: float = Field(description="The duration requested of the model (after the buffer).")
    original_target_duration: float = Field(description="The prompt's target duration, before the buffer.")
    duration_diff: float | None = Field(None, description="actual_duration - original_target_duration.")
    status: ClipOutcome
    cost: float = 0.0
    retry_count: int = Field(0, description="Attempts beyond the first.")
    generation_time: float = Field(0.0, description="Seconds spent on this clip, all attempts.")
    metadata: dict[str, Any] = Field(default_factory=dict)
    model: str | None = None
    prediction_id: str | None = Field(None, description="The prediction that made the clip (or the last).")
    prediction_ids: list[str] = Field(
        default_factory=list, description="Every paid prediction of the clip's current plan, in any run."
    )
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    storage_path: str | None = Field(None, description="Object path in the video bucket, to re-sign links.")
    reused: bool = Field(
        False, description="Stored by an earlier run of the job; nothing was paid for it this time."
    )
    thumbnail_url: str | None = None
    error: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_original_target(cls, data: Any) -> Any:
        # Older producers did not send it: it then equals target_duration (backward compatible).
        if isinstance(data, dict) and data.get("original_target_duration") is None:
            data = {**data, "original_target_duration": data.get("target_duration")}
        return data


class Clips(BaseModel):
    """The result of one job."""

    job_id: UUID
    clips: list[Clip]
    total_clips: int
    successful_clips: int
    failed_clips: int
    total_cost: float = Field(description="What the clips' current plans cost, over every run.")
    total_generation_time: float
    spent_this_run: float = Field(
        0.0,
        description="What this run paid for, whatever became of it; a create whose answer was lost counts "
        "(it may have made a prediction) until a later run finds it made nothing.",
    )
    spent_all_runs: float = Field(0.0, description="The same over every run of the job, all plans.")

    @classmethod
    def collect(cls, job_id: UUID, clips: list[Clip], total_generation_time: float) -> Clips:
        ordered = sorted(clips, key=lambda clip: clip.clip_index)
        ok = sum(clip.status == "success" for clip in ordered)
        return cls(
            job_id=job_id,
            clips=ordered,
            total_clips=len(ordered),
            successful_clips=ok,
            failed_clips=len(ordered) - ok,
            total_cost=round(sum(clip.cost for clip in ordered), 4),
            total_generation_time=round(total_generation_time, 3),
        )
