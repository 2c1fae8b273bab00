"""How the job and its options look in Prefect's run form: fields in declared order, each side of a union
named, and the model as a catalog choice or any Replicate model's owner/name. Only JSON-schema shaping: the
models in clipgen/job.py validate; the plan refuses what the form lets through.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from clipgen.catalog import MODELS


def in_declared_order(schema: dict[str, Any]) -> None:
    """Numbers the fields in the order declared here. Prefect's run form sorts fields by `position`, and a
    Prefect server on PostgreSQL stores the schema as jsonb, which reorders an object's keys."""
    for position, field in enumerate(schema.get("properties", {}).values()):
        field["position"] = position


def branch_titles(**titles: str) -> Callable[[dict[str, Any]], None]:
    """Names the sides of a union field's schema by JSON type (`null="No budget"`): a form labels each side
    by its title, else by a bare type name ("number", "null")."""

    def name_branches(schema: dict[str, Any]) -> None:
        for branch in schema.get("anyOf", []):
            if branch.get("type") in titles:
                branch["title"] = titles[branch["type"]]

    return name_branches


MODEL_CHOICES: tuple[str, ...] = tuple(MODELS)
ASPECT_RATIO_CHOICES: tuple[str, ...] = tuple(
    dict.fromkeys(ratio for spec in MODELS.values() for ratio in spec.aspect_ratios)
)
"""Every ratio some model offers, in catalog order; the plan refuses one the chosen model lacks."""

OWNER_NAME_PATTERN = r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$"
"""A Replicate model's name, `owner/name`: what the run form's free-text branch of `model` accepts."""

_CATALOG_HELP = "A catalog model, by key: " + "; ".join(
    f"`{spec.key}` {spec.title}{', needs a scene image' * spec.requires_image}" for spec in MODELS.values()
)
_ANYMODEL_HELP = (
    "Any Replicate video model, as owner/name (e.g. `pixverse/pixverse-v5`): planned with the input "
    "schema Replicate publishes for it, read when the job first runs and kept with the job, so a rerun plans "
    "with the same one. Its price is not known: the estimate says so, and a budget needs Price per second."
)
MODEL_HELP = (
    "Video model: a catalog key (the list), or any Replicate video model as owner/name (free text). A name "
    "that is neither, or a model Replicate does not have, is refused naming options.model before anything "
    "is paid."
)


def catalog_or_any_model(schema: dict[str, Any]) -> None:
    """The run form offers the catalog as a select and owner/name as free text, each described. A form shows
    the first string branch for a string value, so the catalog comes first and the default stays in it.
    Python validation stays a plain `str`: the plan refuses an unknown name, naming options.model."""
    schema.pop("type", None)
    schema["anyOf"] = [
        {
            "title": "Catalog model",
            "type": "string",
            "enum": list(MODEL_CHOICES),
            "description": _CATALOG_HELP,
        },
        {
            "title": "Any Replicate video model",
            "type": "string",
            "pattern": OWNER_NAME_PATTERN,
            "description": _ANYMODEL_HELP,
        },
    ]


ASPECT_RATIO_HELP = (
    "Width:height of every clip. Each model offers only some ("
    + "; ".join(f"{spec.key}: {', '.join(spec.aspect_ratios)}" for spec in MODELS.values())
    + "); a ratio the chosen model lacks is refused, naming options.aspect_ratio, before anything is paid."
)
