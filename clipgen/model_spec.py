"""A model as planning and requests see it: built from its published schema, its roles, and the few facts
a schema cannot say (price, deadline, the shape it delivers, values we always send).

This module owns the derivation: `build_spec` turns an `InputSchema` plus `ModelFacts` into a `ModelSpec`.
The catalog (clipgen/catalog.py) holds the facts of the models we know; a model named `owner/name` gets
facts read from its schema alone (`facts_for_any`).

How an aspect ratio is honoured (`AspectVia`):
- "input":  the model has an aspect-ratio (or size) input; a start image is fitted to the same ratio as well,
            because with a start image several models follow the image instead.
- "image":  the output follows the start image's shape, so the image is fitted (cropped) to the ratio first.
            Without an image only `text_aspect_ratios` are possible.
- "fixed":  the model has one output shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from clipgen.model_roles import Durations, Roles, aspect_values, durations, infer_roles, short_side, size_of
from clipgen.model_schema import InputSchema

AspectVia = Literal["input", "image", "fixed"]
Quirk = Literal["svd_frame_rate", "veo_references"]
IMAGE_RATIOS = ("16:9", "9:16", "1:1")
"""The ratios a model whose output follows its start image is offered at."""
DEFAULT_SHORT_SIDE = 720


@dataclass(frozen=True)
class ModelFacts:
    """What a schema cannot say about a model. Every field but the first three is optional."""

    key: str
    title: str
    schema: InputSchema
    community: bool = False
    """Run by pinned version through /v1/predictions rather than by name (no official model endpoint)."""
    roles: Mapping[str, str | None] = field(default_factory=dict)
    """Role -> input, where the names alone mislead (None: the model has that input but we do not use it)."""
    fixed: Mapping[str, Any] = field(default_factory=dict)
    """Inputs always sent with these values (a resolution, a mode, a step count)."""
    short_side: int | None = None
    """The delivered clip's short side at the settings we send; else read from a fixed resolution."""
    output_sizes: Mapping[str, tuple[int, int]] | None = None
    aspect_ratios: tuple[str, ...] | None = None
    text_aspect_ratios: tuple[str, ...] | None = None
    aspect_via: AspectVia | None = None
    durations: Durations | None = None
    fps: float = 24.0
    price_per_second: float | None = None
    price_per_run: float = 0.0
    price_confirmed: bool = False
    timeout_s: float = 120.0
    character_references: str = "not sent: the model takes no reference images"
    request_notes: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    quirk: Quirk | None = None
    in_catalog: bool = True


@dataclass(frozen=True)
class ModelSpec:
    key: str
    title: str
    replicate_model: str
    version: str | None
    """Pinned version for community models (created through /v1/predictions); None for official models."""
    durations: tuple[float, ...] | None
    """Discrete durations the model accepts, ascending; None for a continuous range."""
    duration_range: tuple[float, float] | None
    """(min, max) seconds for continuous models."""
    aspect_ratios: tuple[str, ...]
    aspect_via: AspectVia
    output_sizes: dict[str, tuple[int, int]]
    """(width, height) of the delivered clip for each aspect ratio, at the settings we send."""
    fps: float
    requires_image: bool
    text_aspect_ratios: tuple[str, ...]
    """Ratios reachable without a start image."""
    image_inputs: tuple[str, ...]
    """Schema inputs that take image URIs."""
    takes_prompt: bool
    takes_negative_prompt: bool
    price_per_second: float | None
    """None when no price is known (the estimate then says so)."""
    price_per_run: float
    price_confirmed: bool
    timeout_s: float
    character_references: str
    notes: tuple[str, ...]
    schema: InputSchema = field(repr=False, compare=False)
    roles: Roles = field(repr=False, compare=False)
    fixed: Mapping[str, Any] = field(repr=False, compare=False)
    aspect_values: Mapping[str, Any] = field(repr=False, compare=False)
    """Ratio -> the value sent for it through the aspect-ratio or size input."""
    request_notes: Mapping[str, str] = field(repr=False, compare=False)
    quirk: Quirk | None = field(repr=False, compare=False)
    in_catalog: bool = True

    @property
    def price_known(self) -> bool:
        return self.price_per_second is not None or self.price_per_run > 0

    @property
    def max_duration(self) -> float:
        if self.durations:
            return self.durations[-1]
        assert self.duration_range is not None
        return self.duration_range[1]

    def cost(self, seconds: float, price_per_second: float | None = None) -> float:
        """Estimated price of one clip of `seconds` requested seconds, in USD (0 when unknown);
        `price_per_second` stands in for a model whose price is not known."""
        per_second = self.price_per_second if self.price_per_second is not None else price_per_second
        return round((per_second or 0.0) * seconds + self.price_per_run, 4)


class UnusableModel(ValueError):
    """The schema leaves something a clip needs unknown (its length, or its shape); names what."""


def build_spec(facts: ModelFacts) -> ModelSpec:
    schema = facts.schema
    roles = infer_roles(schema, facts.roles)
    lengths = facts.durations or durations(schema, roles)
    if lengths is None:
        raise UnusableModel(f"{schema.model} has no duration input (duration, seconds or num_frames)")
    aspect_via, ratios, text_ratios, values = _shapes(facts, roles)
    sizes = facts.output_sizes or _sizes_sent(roles, values) or _sizes(ratios, _short_side(facts, roles))
    images = (roles.first_image, roles.last_image, roles.reference_images)
    return ModelSpec(
        key=facts.key,
        title=facts.title,
        replicate_model=schema.model,
        version=schema.version if facts.community else None,
        durations=lengths.discrete or None,
        duration_range=lengths.span,
        aspect_ratios=ratios,
        aspect_via=aspect_via,
        output_sizes=dict(sizes),
        fps=facts.fps,
        requires_image=roles.first_image is not None and roles.first_image in schema.required,
        text_aspect_ratios=text_ratios,
        image_inputs=tuple(name for name in images if name),
        takes_prompt=roles.prompt is not None,
        takes_negative_prompt=roles.negative_prompt is not None,
        price_per_second=facts.price_per_second,
        price_per_run=facts.price_per_run,
        price_confirmed=facts.price_confirmed,
        timeout_s=facts.timeout_s,
        character_references=facts.character_references,
        notes=facts.notes,
        schema=schema,
        roles=roles,
        fixed=dict(facts.fixed),
        aspect_values=values,
        request_notes=dict(facts.request_notes),
        quirk=facts.quirk,
        in_catalog=facts.in_catalog,
    )


def _shapes(
    facts: ModelFacts, roles: Roles
) -> tuple[AspectVia, tuple[str, ...], tuple[str, ...], dict[str, Any]]:
    """How the ratio is honoured, the ratios offered, those reachable from text alone, and the values."""
    chooser = roles.aspect_ratio or roles.size
    values = aspect_values(chooser, facts.schema.properties[chooser]) if chooser else {}
    if facts.aspect_via is not None:
        via = facts.aspect_via
    else:
        via = "input" if values else ("image" if roles.first_image else "fixed")
    ratios = facts.aspect_ratios or (tuple(values) if via == "input" else IMAGE_RATIOS)
    if facts.text_aspect_ratios is not None:
        text = facts.text_aspect_ratios
    else:
        text = ratios if via == "input" else ()
    if via == "fixed" and facts.aspect_ratios is None:
        raise UnusableModel(
            f"{facts.schema.model} has no aspect-ratio, size or start-image input: its shape is unknown"
        )
    return via, ratios, text, values


def _sizes_sent(roles: Roles, values: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """A size input ("1280*720") says the delivered size itself."""
    if roles.size is None or roles.aspect_ratio is not None:
        return {}
    return {ratio: size for ratio, value in values.items() if (size := size_of(str(value)))}


def _short_side(facts: ModelFacts, roles: Roles) -> int:
    if facts.short_side:
        return facts.short_side
    if roles.resolution:
        prop = facts.schema.properties[roles.resolution]
        sent = facts.fixed.get(roles.resolution, prop.get("default"))
        if (side := short_side(sent)) is not None:
            return side
    return DEFAULT_SHORT_SIDE


def _sizes(ratios: tuple[str, ...], short: int) -> dict[str, tuple[int, int]]:
    """Each ratio's (width, height) with the short side at `short`, the long side rounded to even."""
    sizes = {}
    for ratio in ratios:
        ratio_w, ratio_h = (int(part) for part in ratio.split(":"))
        if ratio_w >= ratio_h:
            sizes[ratio] = (2 * round(short * ratio_w / ratio_h / 2), short)
        else:
            sizes[ratio] = (short, 2 * round(short * ratio_h / ratio_w / 2))
    return sizes


def facts_for_any(schema: InputSchema) -> ModelFacts:
    """A model outside the catalog: everything from its schema; no price, the default deadline."""
    return ModelFacts(
        key=schema.model,
        title=f"{schema.model} (by its published schema)",
        schema=schema,
        community=not schema.official,
        character_references="not sent: reference images are sent to catalog models only",
        in_catalog=False,
        timeout_s=300.0,
    )
