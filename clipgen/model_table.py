"""docs/models.md's catalog tables, rendered from the catalog so the page cannot drift from the code.

This module owns the rendering: `catalog_table` (what each model accepts and costs) and `inputs_table` (what
each is sent) are pure functions of the `ModelSpec`s; `rewrite` puts them between their marker comments in
the page's text. `python -m clipgen.model_table` (or `python3 dev.py docs`) rewrites docs/models.md;
tests/test_docs.py fails while the page differs from what this renders.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from clipgen.model_spec import ModelSpec

PAGE = Path(__file__).resolve().parent.parent / "docs" / "models.md"
COMMAND = "python3 dev.py docs"
"""What rewrites the page (named by the test that fails while it differs)."""
_VERSION_SHOWN = 12  # a pinned version's first characters; the full one is in the schema file


def catalog_table(models: Iterable[ModelSpec]) -> str:
    rows = [_catalog_row(spec) for spec in models]
    header = ("Key", "Model", "Replicate model", "Durations (s)", "Aspect ratios", "Start image", "Price")
    return _table((*header, "Deadline", "Notes"), rows)


def inputs_table(models: Iterable[ModelSpec]) -> str:
    rows = [(f"`{s.key}`", _inputs_sent(s), _scene_input(s), s.character_references) for s in models]
    return _table(("Key", "Inputs sent (besides `prompt`)", "Scene image", "Character references"), rows)


TABLES = {"catalog": catalog_table, "inputs": inputs_table}
"""Each generated table by the name its markers carry (`<!-- begin generated: catalog ...`)."""


def rewrite(page: str, models: Sequence[ModelSpec]) -> str:
    """The page with every generated table replaced by its rendering. ValueError names a missing marker."""
    for name, render in TABLES.items():
        begin, end = _markers(name)
        start = page.find(begin)
        stop = page.find(end, start)
        if start < 0 or stop < 0:
            raise ValueError(f"the page has no {begin} ... {end} block")
        page = f"{page[:start]}{begin}\n{render(models)}\n{page[stop:]}"
    return page


def _markers(name: str) -> tuple[str, str]:
    note = f"generated from clipgen/catalog.py by `{COMMAND}`; do not edit"
    return f"<!-- begin generated: {name} ({note}) -->", f"<!-- end generated: {name} -->"


# --- cells ------------------------------------------------------------------------------------------------


def _catalog_row(spec: ModelSpec) -> tuple[str, ...]:
    return (
        f"`{spec.key}`",
        spec.title,
        _replicate_model(spec),
        _durations(spec),
        _aspect_ratios(spec),
        _start_image(spec),
        price_label(spec),
        f"{spec.timeout_s:g} s",
        " ".join(spec.notes),
    )


def _replicate_model(spec: ModelSpec) -> str:
    if spec.version is None:
        return f"`{spec.replicate_model}`"
    return f"`{spec.replicate_model}` (community, version `{spec.version[:_VERSION_SHOWN]}`)"


def _durations(spec: ModelSpec, separator: str = ", ") -> str:
    if spec.durations is None:
        assert spec.duration_range is not None
        low, high = spec.duration_range
        return f"{low:.2f}–{high:.2f} (continuous)"
    values = spec.durations
    whole_steps = all(b - a == 1 for a, b in itertools.pairwise(values))
    if len(values) > 3 and whole_steps and values[0].is_integer():
        return f"{values[0]:g}–{values[-1]:g} (whole seconds)"
    return separator.join(f"{value:g}" for value in values)


def _aspect_ratios(spec: ModelSpec) -> str:
    ratios = ", ".join(spec.aspect_ratios)
    if spec.aspect_via == "fixed":
        width, height = spec.output_sizes[spec.aspect_ratios[0]]
        return f"{ratios} (fixed, {width}x{height})"
    if spec.aspect_via == "input":
        return ratios
    need_image = [ratio for ratio in spec.aspect_ratios if ratio not in spec.text_aspect_ratios]
    if len(need_image) == len(spec.aspect_ratios):
        return f"{ratios} (all need a scene image)"
    return f"{ratios} ({', '.join(need_image)} need a scene image)"


def _start_image(spec: ModelSpec) -> str:
    if spec.roles.first_image is None:
        return "not taken"
    return "required" if spec.requires_image else "optional"


def price_label(spec: ModelSpec) -> str:
    """The price cell: "$0.070/s (Replicate)", "$0.07/run (est.)" or "unknown" (also the cost benchmark's)."""
    if not spec.price_known:
        return "unknown"
    if spec.price_per_run and not spec.price_per_second:
        price = f"${spec.price_per_run:.2f}/run"
    else:
        price = f"${spec.price_per_second:.3f}/s"
        if spec.price_per_run:
            price += f" + ${spec.price_per_run:.2f}/run"
    return f"{price} (Replicate)" if spec.price_confirmed else f"{price} (est.)"


def _inputs_sent(spec: ModelSpec) -> str:
    """The inputs clipgen/model_inputs.py fills by role, then the values always sent (`ModelSpec.fixed`)."""
    roles = spec.roles
    sent = [] if spec.takes_prompt else ["no prompt"]
    if roles.negative_prompt:
        sent.append(f"`{roles.negative_prompt}`")
    chooser = roles.aspect_ratio or roles.size
    if chooser and spec.aspect_via == "input":
        sent.append(f"`{chooser}` {_values(spec.aspect_values)}")
    if roles.duration:
        sent.append(f"`{roles.duration}` {_durations(spec, '/')}")
    elif roles.frames and roles.fps and spec.durations:
        sent.append(f"`{roles.frames}` (the duration in frames)")
    if spec.quirk == "svd_frame_rate":
        sent.append(f"`{roles.fps}` (chosen for the duration)")
    if roles.audio:
        sent.append(f"`{roles.audio}: false`")
    sent += [f"`{name}: {value}`" for name, value in spec.fixed.items()]
    return ", ".join(sent)


def _values(aspect_values: Mapping[str, object]) -> str:
    """The values sent per ratio, or just the ratios when each is sent as itself."""
    if all(str(value) == ratio for ratio, value in aspect_values.items()):
        return "/".join(aspect_values)
    return "/".join(f"{value} ({ratio})" for ratio, value in aspect_values.items())


def _scene_input(spec: ModelSpec) -> str:
    if spec.roles.first_image is None:
        return spec.request_notes.get("scene_reference", "not sent: the model takes no start image")
    name = f"`{spec.roles.first_image}`"
    return f"{name} (required)" if spec.requires_image else name


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    """Rewrite the page (the path given, else docs/models.md) from the catalog."""
    from clipgen.catalog import MODELS

    page = Path(argv[0]) if argv else PAGE
    text = page.read_text(encoding="utf-8")
    updated = rewrite(text, list(MODELS.values()))
    if updated != text:
        page.write_text(updated, encoding="utf-8")
    sys.stdout.write(f"{page}: {'rewritten' if updated != text else 'already up to date'}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
