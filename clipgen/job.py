"""The job (input) and the result (output), JSON-compatible with the existing pipeline.

Unknown extra fields in a job are ignored, so an upstream that adds fields does not break us.
"""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_TARGET_SECONDS = 60.0


class ClipPrompt(BaseModel):
    """One clip to generate."""

    model_config = ConfigDict(extra="ignore")

    clip_index: int = Field(ge=0, description="Position of the clip in the job; unique within the job.")
    prompt: str = Field(description="What the clip shows.")
    negative_prompt: str = Field("", description="What the clip should not show (may be empty).")
    duration: float = Field(
        gt=0, le=MAX_TARGET_SECONDS, description="Target duration in seconds (before any buffer)."
    )
    scene_reference_url: str | None = Field(
        None, description="Scene image: http(s) URL, file path or data URI. The start frame where possible."
    )
    character_reference_urls: list[str] = Field(default_factory=list, description="Character images.")
    object_reference_urls: list[str] = Field(default_factory=list, description="Object images.")
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
        return value if value and value.strip() else None


class ClipPrompts(BaseModel):
    """One job: the clips to generate, all with the same model and aspect ratio."""

    model_config = ConfigDict(extra="ignore")

    job_id: UUID
    clip_prompts: list[ClipPrompt] = Field(min_length=1)
    total_clips: int | None = Field(None, description="Number of clips; must match clip_prompts if given.")
    generation_time: float | str | None = Field(None, description="Carried through from the upstream step.")

    @model_validator(mode="after")
    def _consistent(self) -> ClipPrompts:
        seen: set[int] = set()
        for prompt in self.clip_prompts:
            if prompt.clip_index in seen:
                raise ValueError(f"clip_index {prompt.clip_index} appears more than once")
            seen.add(prompt.clip_index)
        if self.total_clips is None:
            self.total_clips = len(self.clip_prompts)
        elif self.total_clips != len(self.clip_prompts):
            raise ValueError(
                f"total_clips is {self.total_clips} but clip_prompts has {len(self.clip_prompts)} entries"
            )
        return self


class GenerationOptions(BaseModel):
    """How to generate a job. Defaults come from settings when the caller gives none (see settings.py)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("kling-v2.5-turbo", description="Catalog key of the video model.")
    aspect_ratio: str = Field("16:9", pattern=r"^\d{1,2}:\d{1,2}$", description="Width:height, e.g. 16:9.")
    concurrency: int = Field(5, ge=1, le=50, description="Clips generated at once.")
    min_success: int = Field(3, ge=1, description="Clips needed for success; capped at the number of clips.")
    clip_timeout_s: float | None = Field(
        None, gt=0, le=3600, description="Per-clip deadline; None means the model's own (120 s by default)."
    )
    duration_buffer: float = Field(
        1.25, ge=1.0, le=2.0, description="Multiplier on the target for continuous-duration models."
    )
    budget_usd: float | None = Field(None, gt=0, description="Refuse jobs whose estimate exceeds this.")


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
    prediction_id: str | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    storage_path: str | None = Field(None, description="Object path in the video bucket, to re-sign links.")
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
    total_cost: float
    total_generation_time: float

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
