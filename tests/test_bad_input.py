"""Bad input (issue 7): a generated corpus of jobs and options, through every entry point.

Each generated case is a job document (any JSON, or a file that is not JSON), its options (command-line flags,
or a GenerationOptions dict for the flow and the queue) and the list of what the generator broke on purpose,
each with the stage that must catch it (`Break`). Cases are valid, break exactly one thing of a given kind
(one test per kind, so no other break can hide it), or scatter breaks over many fields. The properties:

- `run` on the command line refuses every broken case with exit 2 before any provider call, naming only the
  fields that were broken, after "video-generator: refused", and never with a traceback; it runs every valid
  one to completion.
- The flow's parameter validation and its plan (what `generate_video_clips` does before any clip task) refuse
  exactly the broken cases, naming only broken fields; a few real flow runs check the same end to end.
- A queued row is refused by `parse_queued_job` exactly when its job or options break the models, naming
  `job.<field>` or `options.<field>`.

Valid full runs are slow (a Prefect flow run each), so they are few; the rest stops before Prefect. The
examples are derandomized and there is no example database, so every run checks the same corpus.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import logging
import math
import re
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from clipgen.backends import register_provider
from clipgen.catalog import MODELS, ModelSpec
from clipgen.errors import ValidationError
from clipgen.job import MAX_CLIP_INDEX, ClipPrompt, ClipPrompts, GenerationOptions
from clipgen.planning import ACCEPT_SHORTFALL_S, plan_job
from clipgen.queueing import parse_queued_job
from clipgen.references import resolve_reference
from clipgen.settings import Settings
from clipgen.stores.queue import QueuedJob
from commands.cli import main
from tests.doubles import ScriptedProvider

pytestmark = pytest.mark.filterwarnings(
    # Hypothesis warns when the global `random` state changes while a strategy draws. The strategies here
    # do not use it, but the session's Prefect server (tests/conftest.py `prefect_server`) runs in threads of
    # this process and does, at any moment.
    "ignore:Do not use the `random` module inside strategies:hypothesis.errors.HypothesisDeprecationWarning"
)

# --- the provider every run here uses: counts generate calls (a "paid call") -----------------------------

PROVIDERS: list[ScriptedProvider] = []


def _counting_provider(settings: object) -> ScriptedProvider:
    provider = ScriptedProvider()
    PROVIDERS.append(provider)
    return provider


@pytest.fixture(autouse=True)
def counting_provider() -> None:
    """Registered per test, not at import: other modules must not see it in the list of providers."""
    register_provider("counting", _counting_provider)


def paid_calls() -> int:
    return sum(sum(provider.calls.values()) for provider in PROVIDERS)


# --- reference values --------------------------------------------------------------------------------------


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 120, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png(32, 18)
DATA_PNG = "data:image/png;base64," + base64.b64encode(PNG).decode()
DATA_SQUARE_PNG = "data:image/png;base64," + base64.b64encode(_png(12, 12)).decode()
VALID_DATA_REFERENCES = (DATA_PNG, DATA_SQUARE_PNG)
# Refused when the references are resolved (planning): unsupported schemes and data: URIs that are not
# images. No http(s): nothing here may touch the network.
BAD_REFERENCES = (
    "ftp://example.com/scene.png",
    "javascript:alert(1)",
    "mailto:someone@example.com",
    "s3://bucket/scene.png",
    "gopher://example.com/scene",
    "C:\\images\\scene.png",
    "data:image/png,not-base64",
    "data:image/png;base64,@@@ not base64 @@@",
    "data:image/png;base64," + base64.b64encode(b"plain text, not a PNG").decode(),
    "data:;base64,",
    "data:image/png;base64,",
)
# Refused by the job model itself: not text every store and API can hold.
UNSTORABLE_TEXT = ("nul \x00 inside", "lone surrogate \ud800", "\udfff")
# Refused by the job model itself: `urlsplit` cannot parse them.
UNPARSEABLE_REFERENCES = ("ftp://[example.com/scene.png", "data://[", "x://a\uff03b/scene.png")
# Files next to the job file, for the command line (which uploads them). The flow and the queue refuse file
# references unless the worker allows them, so the API corpus does not use them.
SCENE_FILE, NOT_AN_IMAGE_FILE, MISSING_FILE = "scene.png", "notes.txt", "missing.png"
TEXT = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")

# --- what was broken, and who must notice ---------------------------------------------------------------

Entry = Literal["cli", "flow", "queue"]
Level = Literal["file", "argv", "job", "options", "plan", "reference", "backend", "row"]
SEEN_BY: dict[Level, frozenset[Entry]] = {
    "file": frozenset({"cli"}),  # the job file is not JSON
    "argv": frozenset({"cli"}),  # argparse: a flag's value has the wrong type
    "job": frozenset({"cli", "flow", "queue"}),  # ClipPrompts refuses it
    "options": frozenset({"cli", "flow", "queue"}),  # GenerationOptions refuses it
    "plan": frozenset({"cli", "flow"}),  # planning refuses it (catalog, durations, budget)
    "reference": frozenset({"cli", "flow"}),  # the reference cannot be resolved to an image
    "backend": frozenset({"cli"}),  # an unknown --store
    "row": frozenset({"queue"}),  # the queued row's job_id differs from its job's
}


@dataclass(frozen=True)
class Break:
    field: str  # as a refusal names it: clip_prompts[2].duration, options.model, JOB.json, --concurrency
    level: Level
    why: str


@dataclass
class Case:
    document: Any  # the job JSON
    options: Any  # GenerationOptions input (flow, queue): a dict, None for the defaults, or broken
    flags: list[str] = field(default_factory=list)
    breaks: list[Break] = field(default_factory=list)
    clips: int = 0
    file_text: str | None = None  # the job file's text when it is not the JSON of `document`
    row_job_id: uuid.UUID | None = None  # queue: the row's own job_id

    def broken(self, entry: Entry) -> list[Break]:
        return [b for b in self.breaks if entry in SEEN_BY[b.level]]

    def job_text(self) -> str:
        return self.file_text if self.file_text is not None else json.dumps(self.document)


def relates(named: str, broken: Break) -> bool:
    """A refusal names exactly the field that was broken (the store check names --provider/--store)."""
    if broken.level == "backend":
        return "--store" in named
    return named == broken.field


def assert_names_only_broken_fields(named: list[str], case: Case, entry: Entry) -> None:
    broken = case.broken(entry)
    assert named, f"the refusal names no field; broken: {broken}"
    for name in named:
        assert any(relates(name, b) for b in broken), f"{name!r} was not broken; broken: {broken}"


# --- strategies ------------------------------------------------------------------------------------------

ALL_LEVELS: frozenset[Level] = frozenset(SEEN_BY)
# Breaks the models let through, so that planning (and the store check) get their share of the corpus.
LATE_LEVELS: frozenset[Level] = frozenset({"plan", "reference", "backend", "row"})
# What can be broken (`Draw.breaking`'s kinds), for cases that break exactly one thing.
JOB_KINDS = (
    "document",
    "job_id",
    "clip_prompts",
    "clip_entry",
    "clip_index",
    "duplicate",
    "prompt",
    "negative_prompt",
    "duration",
    "scene",
    "reference",
    "reference_list",
    "metadata",
    "total_clips",
    "generation_time",
    "model",
    "aspect_ratio",
    "concurrency",
    "min_success",
)
CLI_KINDS = (*JOB_KINDS, "store", "file")
API_KINDS = (
    *JOB_KINDS,
    "clip_timeout_s",
    "duration_buffer",
    "budget_usd",
    "unknown_option",
    "options",
    "row",
)
Mode = Literal["valid", "single", "scatter"]


class Draw:
    """Draws the values of one case and records what it breaks. Modes:

    - valid: nothing is broken.
    - single: the first field of kind `target` is broken, nothing else, so that no other break can hide it:
      a refusal must name that field. (It may not come up, e.g. a reference in a job without one.)
    - scatter: each field is broken with `rate` percent, at the `levels` allowed; several breaks per case.
    Shrinking goes towards fewer breaks.
    """

    def __init__(self, draw: st.DrawFn, entry: Literal["cli", "api"], mode: Mode, target: str) -> None:
        self.draw, self.entry, self.mode, self.target = draw, entry, mode, target
        self.breaks: list[Break] = []
        self.levels = ALL_LEVELS
        self.rate = 0
        self.done = False
        if mode == "scatter":
            self.rate = draw(st.sampled_from([4, 10, 30, 60]))
            self.levels = draw(st.sampled_from([ALL_LEVELS, LATE_LEVELS]))

    def __call__(self, strategy: st.SearchStrategy[Any]) -> Any:
        return self.draw(strategy)

    def breaking(self, kind: str, *levels: Level) -> bool:
        """Whether to break the next field, of `kind`, which can break at `levels`."""
        if self.mode == "single":
            if kind != self.target or self.done:
                return False
            self.done = True
            return True
        if self.rate == 0 or not self.levels.intersection(levels):
            return False
        return bool(self.draw(st.integers(0, 99)) >= 100 - self.rate)

    def broke(self, field: str, level: Level, why: str) -> None:
        self.breaks.append(Break(field, level, why))

    def bad(self, field: str, choices: list[tuple[Any, Level, str]]) -> Any:
        """One of the allowed `choices` (value, level, why), recorded as a break of `field`."""
        allowed = [choice for choice in choices if choice[1] in self.levels]
        assert allowed, f"no break of {field} at {sorted(self.levels)}"
        value, level, why = self.draw(st.sampled_from(allowed))
        self.broke(field, level, why)
        return value


MISSING = object()
JSON_SCALARS = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(TEXT, max_size=12)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(TEXT, max_size=8), inner, max_size=3),
    max_leaves=8,
)
CLIP_FIELDS = set(ClipPrompt.model_fields)
UNKNOWN_KEYS = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz_"), min_size=1, max_size=12)


def _put(target: dict[str, Any], key: str, value: Any) -> None:
    if value is not MISSING:
        target[key] = value


def _reference(d: Draw, where: str, *, list_item: bool) -> Any:
    """A scene or character/object reference: valid, refused by planning, or refused by the model."""
    if d.breaking("reference", "reference", "job"):
        choices: list[tuple[Any, Level, str]] = [
            (d(st.sampled_from(BAD_REFERENCES)), "reference", "unresolvable reference"),
            (d(st.sampled_from([5, 1.5, ["x"], {"url": DATA_PNG}, True])), "job", "reference not a string"),
            (d(st.sampled_from(UNSTORABLE_TEXT)), "job", "reference not storable text"),
            (d(st.sampled_from(UNPARSEABLE_REFERENCES)), "job", "reference urlsplit refuses"),
        ]
        if list_item:
            choices.append((None, "job", "null in a reference list"))
        if d.entry == "cli":
            choices.append((MISSING_FILE, "reference", "file does not exist"))
            choices.append((NOT_AN_IMAGE_FILE, "reference", "file is not an image"))
        return d.bad(where, choices)
    valid = list(VALID_DATA_REFERENCES)
    if d.entry == "cli":
        valid += [SCENE_FILE, f"./{SCENE_FILE}", "ABSOLUTE", "FILE-URL"]  # made absolute when written
    return d(st.sampled_from(valid))


def _clip_prompt(
    d: Draw, position: int, spec: ModelSpec | None, ratio: str, indexes: list[int]
) -> tuple[Any, int | None]:
    """One entry of clip_prompts, and its clip_index when that is valid."""
    where = f"clip_prompts[{position}]"
    if d.breaking("clip_entry", "job"):
        value = d.bad(where, [(v, "job", "clip prompt not an object") for v in ("clip", 7, None, ["clip"])])
        return value, None
    prompt: dict[str, Any] = {}

    # clip_index: unique, 0..MAX_CLIP_INDEX
    index: int | None = None
    if indexes and d.breaking("duplicate", "job"):
        prompt["clip_index"] = d(st.sampled_from(indexes))
        d.broke("clip_prompts", "job", "duplicate clip_index")  # uniqueness is the list's rule
    elif d.breaking("clip_index", "job"):
        choices: list[tuple[Any, Level, str]] = [
            (-1, "job", "negative clip_index"),
            (-(2**40), "job", "negative clip_index"),
            (MAX_CLIP_INDEX + 1, "job", "clip_index beyond a PostgreSQL integer"),
            (2**70, "job", "clip_index beyond 64 bits"),
            (1.5, "job", "fractional clip_index"),
            ("first", "job", "clip_index not a number"),
            (None, "job", "null clip_index"),
            (MISSING, "job", "clip_index missing"),
        ]
        _put(prompt, "clip_index", d.bad(f"{where}.clip_index", choices))
    else:
        index = d(st.integers(0, 9) | st.integers(0, MAX_CLIP_INDEX))
        while index in indexes:
            index = (index + 1) % (MAX_CLIP_INDEX + 1)
        prompt["clip_index"] = index

    # prompt: any text that is not blank
    if d.breaking("prompt", "job"):
        blank = d(st.text(st.sampled_from(" \t\n\r\x0b\x0c\u3000\u2003\x1c"), min_size=1))
        choices = [
            ("", "job", "empty prompt"),
            (blank, "job", "blank prompt"),
            (None, "job", "null prompt"),
            (42, "job", "prompt not a string"),
            (["a", "prompt"], "job", "prompt not a string"),
            (MISSING, "job", "prompt missing"),
            (d(st.sampled_from(UNSTORABLE_TEXT)), "job", "prompt not storable text"),
        ]
        _put(prompt, "prompt", d.bad(f"{where}.prompt", choices))
    else:
        short = st.text(TEXT, min_size=1, max_size=80).filter(lambda s: bool(s.strip()))
        long = st.integers(2_000, 8_000).map(lambda n: ("a long prompt " * n)[:n])
        prompt["prompt"] = d(short | long)

    # negative_prompt: optional; text only where the model takes one
    refuses_negative = spec is not None and not spec.takes_negative_prompt
    if d.breaking("negative_prompt", "job", *(["plan"] if refuses_negative else [])):
        choices = [
            (None, "job", "null negative_prompt"),
            (5, "job", "negative_prompt not a string"),
            (d(st.sampled_from(UNSTORABLE_TEXT)), "job", "negative_prompt not storable text"),
        ]
        if refuses_negative:
            assert spec is not None
            choices.append(("blurry", "plan", f"{spec.key} takes no negative prompt"))
        _put(prompt, "negative_prompt", d.bad(f"{where}.negative_prompt", choices))
    else:
        blank = st.sampled_from([MISSING, "", "   "])
        text = st.text(TEXT, min_size=1, max_size=40).filter(lambda s: bool(s.strip()))
        _put(prompt, "negative_prompt", d(blank) if refuses_negative else d(blank | text))

    # duration: (0, 60] and reachable by the model (from 2 s under target)
    longest = spec.max_duration if spec else 60.0
    unreachable = spec is not None and longest + ACCEPT_SHORTFALL_S < 59
    if d.breaking("duration", "job", *(["plan"] if unreachable else [])):
        choices = [
            (0, "job", "zero duration"),
            (-d(st.floats(min_value=0, exclude_min=True, allow_infinity=False)), "job", "negative duration"),
            (math.nan, "job", "NaN duration"),
            (math.inf, "job", "infinite duration"),
            (-math.inf, "job", "negative infinite duration"),
            (d(st.floats(min_value=60, exclude_min=True, allow_nan=False)), "job", "duration over 60 s"),
            ("five", "job", "duration not a number"),
            (None, "job", "null duration"),
            ([5], "job", "duration not a number"),
            (MISSING, "job", "duration missing"),
        ]
        if unreachable:
            assert spec is not None
            seconds = d(st.floats(longest + ACCEPT_SHORTFALL_S + 0.01, 60))
            choices.append((seconds, "plan", f"{spec.key} cannot reach {seconds} s"))
        _put(prompt, "duration", d.bad(f"{where}.duration", choices))
    else:
        top = min(60.0, longest + ACCEPT_SHORTFALL_S - 0.01)
        prompt["duration"] = d(st.floats(0, top, exclude_min=True) | st.integers(1, int(top)) | st.just(top))

    # scene_reference_url: none ("" and blanks too, as the existing pipeline sends), or an image
    needs_image = spec is not None and (spec.requires_image or ratio not in spec.text_aspect_ratios)
    with_image = not d.breaking("scene", "plan") if needs_image else d(st.booleans())
    if with_image:
        _put(prompt, "scene_reference_url", _reference(d, f"{where}.scene_reference_url", list_item=False))
    else:
        _put(prompt, "scene_reference_url", d(st.sampled_from([MISSING, None, "", "  "])))
        if spec is not None and needs_image:
            why = "needs a scene image" if spec.requires_image else f"makes {ratio} only from a scene image"
            d.broke(f"{where}.scene_reference_url", "plan", f"{spec.key} {why}")

    # character and object references: lists of references
    for key in ("character_reference_urls", "object_reference_urls"):
        if d.breaking("reference_list", "job"):
            choices = [
                (DATA_PNG, "job", f"{key} not a list"),
                (None, "job", f"null {key}"),
                ({"0": DATA_PNG}, "job", f"{key} not a list"),
            ]
            prompt[key] = d.bad(f"{where}.{key}", choices)
        elif d(st.booleans()):
            count = d(st.integers(0, 2))
            prompt[key] = [_reference(d, f"{where}.{key}[{i}]", list_item=True) for i in range(count)]

    # metadata: any JSON object
    if d.breaking("metadata", "job"):
        choices = [
            ("scene 1", "job", "metadata not an object"),
            ([1, 2], "job", "metadata not an object"),
            (None, "job", "null metadata"),
            ({"note": d(st.sampled_from(UNSTORABLE_TEXT))}, "job", "metadata text not storable"),
            ({d(st.sampled_from(UNSTORABLE_TEXT)): 1}, "job", "metadata key not storable"),
        ]
        prompt["metadata"] = d.bad(f"{where}.metadata", choices)
    elif d(st.booleans()):
        prompt["metadata"] = d(st.dictionaries(st.text(TEXT, max_size=10), JSON_VALUES, max_size=4))

    # unknown fields are ignored
    for key in d(st.lists(UNKNOWN_KEYS.filter(lambda k: k not in CLIP_FIELDS), max_size=2, unique=True)):
        prompt[key] = d(JSON_VALUES)
    return prompt, index


def _ratio(d: Draw, spec: ModelSpec | None) -> tuple[Any, str]:
    """An aspect ratio: (value, the ratio planning will see). A value of MISSING means the default, 16:9."""
    if d.breaking("aspect_ratio", "options", *(["plan"] if spec else [])):
        malformed = ["wide", "16/9", "1:1:1", "169:100", "", "16:9\n"]
        choices: list[tuple[Any, Level, str]] = [(v, "options", f"aspect ratio {v!r}") for v in malformed]
        for ratio in ("4:3", "21:9", "3:2", "16:9", "9:16", "1:1"):
            if spec is not None and ratio not in spec.aspect_ratios:
                choices.append((ratio, "plan", f"{spec.key} does not make {ratio}"))
        if d.entry == "api":
            choices += [(169, "options", "aspect_ratio not a string"), (None, "options", "null aspect_ratio")]
        value = d.bad("options.aspect_ratio", choices)
        return value, value
    if spec is None:
        value = d(st.sampled_from([MISSING, "16:9", "9:16", "1:1", "3:2"]))
    else:
        defaults = [MISSING] if "16:9" in spec.aspect_ratios else []
        value = d(st.sampled_from([*defaults, *spec.aspect_ratios]))
    return value, "16:9" if value is MISSING else value


def _model(d: Draw) -> tuple[Any, ModelSpec | None]:
    if d.breaking("model", "plan", "options"):
        unknown = ["sora", "KLING-V2.1", ""]
        choices: list[tuple[Any, Level, str]] = [(v, "plan", f"unknown model {v!r}") for v in unknown]
        if d.entry == "api":
            choices += [(5, "options", "model not a string"), (None, "options", "null model")]
        return d.bad("options.model", choices), None
    keys = [MISSING, *MODELS]
    if d.target == "scene":  # the models that refuse a clip without one
        keys = [key for key, spec in MODELS.items() if spec.requires_image]
    key = d(st.sampled_from(keys))
    return key, MODELS["kling-v2.5-turbo" if key is MISSING else key]


@st.composite
def cli_cases(draw: st.DrawFn, mode: Mode, target: str = "") -> Case:
    """A job file and `run` flags."""
    d = Draw(draw, "cli", mode, target)
    flags: list[str] = []
    model, spec = _model(d)
    if model is not MISSING:
        flags += ["--model", model]
    ratio_value, ratio = _ratio(d, spec)
    if ratio_value is not MISSING:
        flags += ["--aspect-ratio", ratio_value]
    for flag, option, high in (("--concurrency", "concurrency", 50), ("--min-success", "min_success", None)):
        if d.breaking(option, "options", "argv"):
            choices: list[tuple[Any, Level, str]] = [
                ("0", "options", f"{option} below 1"),
                ("-3", "options", f"{option} below 1"),
                ("abc", "argv", f"{flag} not an integer"),
                ("2.5", "argv", f"{flag} not an integer"),
            ]
            if high is not None:
                choices.append((str(high + 1), "options", f"{option} above {high}"))
                choices.append((str(10**30), "options", f"{option} huge"))
            value = d.bad(f"options.{option}", choices)
            if d.breaks[-1].level == "argv":  # argparse names the flag
                d.breaks[-1] = Break(flag, "argv", d.breaks[-1].why)
            flags += [flag, value]
        elif d(st.booleans()):
            flags += [flag, str(d(st.integers(1, high or 10**30)))]
    if d.breaking("store", "backend"):
        flags += ["--store", d.bad("--provider/--store", [("nowhere", "backend", "unknown store")])]
    elif d(st.booleans()):
        flags += ["--store", "local"]
    case = _job(d, spec, ratio)
    case.flags = flags
    if d.breaking("file", "file") and (d.mode == "single" or d.breaking("file", "file")):  # it hides the rest
        case.file_text = d(st.sampled_from(["", "{", "not json", '{"job_id": }', "[1, 2,]"]))
        case.breaks = [Break("JOB.json", "file", "not JSON")] + [b for b in case.breaks if b.level == "argv"]
    return case


@st.composite
def api_cases(draw: st.DrawFn, mode: Mode | None = None, target: str = "") -> Case:
    """A job document and GenerationOptions input, as the flow (Prefect parameters) and the queue get them.
    Without a mode: valid or scattered breaks."""
    d = Draw(draw, "api", mode or draw(st.sampled_from(["valid", "scatter"])), target)
    options: dict[str, Any] = {}
    model, spec = _model(d)
    _put(options, "model", model)
    ratio_value, ratio = _ratio(d, spec)
    _put(options, "aspect_ratio", ratio_value)
    numeric: list[tuple[str, st.SearchStrategy[Any], list[Any]]] = [
        ("concurrency", st.integers(1, 50), [0, -1, 51, 10**6, "many", 2.5, None, math.nan]),
        ("min_success", st.integers(1, 10**12), [0, -5, "all", 1.5, None]),
        (
            "clip_timeout_s",
            st.none() | st.floats(0, 3600, exclude_min=True),
            [0, -1, 3600.5, math.nan, math.inf, "soon"],
        ),
        ("duration_buffer", st.floats(1.0, 2.0), [0.99, 2.01, math.nan, -math.inf, None]),
        ("budget_usd", _budgets(spec), [0, -1, math.nan, math.inf, "lots"]),
    ]
    for key, valid, invalid in numeric:
        if d.breaking(key, "options", *(["plan"] if key == "budget_usd" else [])):
            choices: list[tuple[Any, Level, str]] = [(v, "options", f"{key} {v!r}") for v in invalid]
            if key == "budget_usd":
                choices.append((0.01, "plan", "budget below the estimate"))
                if spec is not None and not spec.price_known:
                    choices.append((5000.0, "plan", f"{spec.key} has no known price for a budget"))
            options[key] = d.bad(f"options.{key}", choices)
        elif d(st.booleans()):
            options[key] = d(valid)
    if d.breaking("unknown_option", "options"):
        key = d(UNKNOWN_KEYS.filter(lambda k: k not in GenerationOptions.model_fields))
        options[key] = d(JSON_VALUES)
        d.broke(f"options.{key}", "options", "unknown option")
    case = _job(d, spec, ratio)
    case.options = options
    if d.breaking("options", "options"):
        choices = [("fast", "options", "options not an object"), ([], "options", "options a list")]
        case.options = d.bad("options", choices)
    elif not options and d(st.booleans()):
        case.options = None
    if isinstance(case.document, dict) and d.breaking("row", "row"):
        case.row_job_id = uuid.uuid4()
        d.broke("job_id", "row", "the queued row's job_id differs")
    return case


def _budgets(spec: ModelSpec | None) -> st.SearchStrategy[Any]:
    """Budgets a plan accepts: any large one, but only none for a model with no known price."""
    if spec is not None and not spec.price_known:
        return st.none()
    return st.none() | st.floats(1000, 1e9)


def _job(d: Draw, spec: ModelSpec | None, ratio: str) -> Case:
    """The job document (and the breaks drawn so far, options included)."""
    if d.breaking("document", "job"):
        document = d.bad("job", [(v, "job", "job not an object") for v in ([], "job", 5, None)])
        return Case(document, None, breaks=d.breaks)
    document: dict[str, Any] = {}
    job_id = uuid.UUID(int=d(st.integers(0, 2**128 - 1)))
    if d.breaking("job_id", "job"):
        choices: list[tuple[Any, Level, str]] = [
            ("not-a-uuid", "job", "job_id not a UUID"),
            ("", "job", "empty job_id"),
            (str(job_id)[:-1], "job", "job_id one digit short"),
            (42, "job", "job_id a number"),
            (None, "job", "null job_id"),
            (MISSING, "job", "job_id missing"),
        ]
        _put(document, "job_id", d.bad("job_id", choices))
    else:
        document["job_id"] = d(st.sampled_from([str(job_id), str(job_id).upper(), job_id.hex]))

    clips = 0
    if d.breaking("clip_prompts", "job"):
        choices = [
            ([], "job", "no clip prompts"),
            ({"0": {}}, "job", "clip_prompts not a list"),
            ("clips", "job", "clip_prompts not a list"),
            (None, "job", "null clip_prompts"),
            (MISSING, "job", "clip_prompts missing"),
        ]
        _put(document, "clip_prompts", d.bad("clip_prompts", choices))
    else:
        prompts, indexes = [], []
        for position in range(d(st.integers(2 if d.target == "duplicate" else 1, 4))):
            prompt, index = _clip_prompt(d, position, spec, ratio, indexes)
            prompts.append(prompt)
            if index is not None:
                indexes.append(index)
        document["clip_prompts"] = prompts
        clips = len(prompts)

    if d.breaking("total_clips", "job"):
        choices = [(v, "job", f"total_clips {v!r}") for v in ("many", 1.5, [2])]
        if clips:
            choices.append((clips + d(st.integers(1, 5)), "job", "total_clips does not match"))
        _put(document, "total_clips", d.bad("total_clips", choices))
    elif d(st.booleans()):
        document["total_clips"] = clips if clips else None
    if d.breaking("generation_time", "job"):
        choices = [
            ([1.5], "job", "generation_time a list"),
            ({"s": 1}, "job", "generation_time an object"),
            ("12 s \x00", "job", "generation_time not storable text"),
        ]
        _put(document, "generation_time", d.bad("generation_time", choices))
    elif d(st.booleans()):
        document["generation_time"] = d(st.none() | st.floats(0, 1e6) | st.text(TEXT, max_size=10))
    known = set(ClipPrompts.model_fields)
    for key in d(st.lists(UNKNOWN_KEYS.filter(lambda k: k not in known), max_size=2, unique=True)):
        document[key] = d(JSON_VALUES)
    return Case(document, None, breaks=d.breaks, clips=clips)


# --- running a case --------------------------------------------------------------------------------------


def write_job_dir(case: Case, directory: Path) -> Path:
    """The job file, the files it may name, and absolute forms of the scene file."""
    (directory / SCENE_FILE).write_bytes(PNG)
    (directory / NOT_AN_IMAGE_FILE).write_text("not an image")
    text = case.job_text()  # json.dumps: ASCII, lone surrogates as \\ud800 escapes
    text = text.replace('"ABSOLUTE"', json.dumps(str(directory / SCENE_FILE)))
    text = text.replace('"FILE-URL"', json.dumps((directory / SCENE_FILE).as_uri()))
    path = directory / "job.json"
    path.write_text(text)
    return path


REFUSAL_LINE = re.compile(r"^  (\S+?): ", re.MULTILINE)


def refused_fields(err: str) -> list[str]:
    assert err.startswith("video-generator: refused"), err
    return REFUSAL_LINE.findall(err)


@dataclass
class Ran:
    code: int
    out: str
    err: str
    calls: int


def run_cli(case: Case, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Ran:
    PROVIDERS.clear()
    capsys.readouterr()
    with tempfile.TemporaryDirectory() as tmp:
        monkeypatch.setenv("VIDEO_GENERATOR_DATA_DIR", str(Path(tmp) / "data"))
        jobs = Path(tmp) / "job"
        jobs.mkdir()
        path = write_job_dir(case, jobs)
        try:
            code = main(["run", str(path), *case.flags, "--provider", "counting"])
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 2
        out, err = capsys.readouterr()
        if code == 2:
            assert_nothing_written(Path(tmp) / "data")
    return Ran(code, out, err, paid_calls())


def assert_nothing_written(data_dir: Path) -> None:
    for name in ("storage", "video_generator.db", "work"):
        assert not (data_dir / name).exists(), f"{name} written for a refused job"


def check_refusal(ran: Ran, case: Case) -> None:
    broken = case.broken("cli")
    assert ran.code == 2, f"exit {ran.code} for a broken job ({broken}):\n{ran.out}\n{ran.err}"
    assert ran.calls == 0
    assert "Traceback" not in ran.out + ran.err, ran.err
    argv = [b for b in broken if b.level == "argv"]
    if argv:  # argparse's own: "video-generator run: error: argument --concurrency: invalid int value: 'abc'"
        assert any(f"error: argument {b.field}:" in ran.err for b in argv), ran.err
        return
    assert_names_only_broken_fields(refused_fields(ran.err), case, "cli")


HYPOTHESIS = {
    "deadline": None,
    "derandomize": True,
    "database": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}


@pytest.mark.parametrize("kind", CLI_KINDS)
@given(data=st.data())
@settings(max_examples=6, **HYPOTHESIS)
def test_the_command_line_refuses_a_job_with_one_thing_broken(
    kind: str, data: st.DataObject, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    case = data.draw(cli_cases("single", kind), label="case")
    assume(case.broken("cli"))
    event(f"refused at: {case.broken('cli')[0].level}")
    check_refusal(run_cli(case, capsys, monkeypatch), case)


@given(case=cli_cases("scatter"))
@settings(max_examples=50, **HYPOTHESIS)
def test_the_command_line_refuses_a_job_with_many_things_broken(
    case: Case, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assume(case.broken("cli"))
    event(f"refused at: {', '.join(sorted({b.level for b in case.broken('cli')}))}")
    check_refusal(run_cli(case, capsys, monkeypatch), case)


@pytest.fixture
def prefect_logs_here(prefect_server: None) -> Iterator[None]:
    """Prefect's console handler keeps the stderr it was configured with (an earlier test's capture, closed by
    now), and reports every record it cannot write with a traceback. Point it at this test's stderr."""
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    handlers = [
        h
        for logger in loggers
        if isinstance(logger, logging.Logger)
        for h in logger.handlers
        if isinstance(h, PrefectConsoleHandler)
    ]
    saved = [(h, h.stream, h.console.file) for h in handlers]
    for handler in handlers:  # not setStream: it flushes the old stream, which may be closed
        handler.stream = handler.console.file = sys.stderr
    yield
    for handler, stream, file in saved:
        handler.stream, handler.console.file = stream, file


@pytest.mark.usefixtures("prefect_logs_here")
@given(case=cli_cases("valid"))
@settings(max_examples=6, **HYPOTHESIS)
def test_the_command_line_runs_every_valid_job(
    case: Case, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not case.breaks
    ran = run_cli(case, capsys, monkeypatch)
    assert ran.code == 0, f"exit {ran.code} for a valid job:\n{ran.out}\n{ran.err}"
    assert "Traceback" not in ran.out + ran.err, ran.err
    assert f"Completed: {case.clips}/{case.clips} clips" in ran.out
    assert ran.calls == case.clips


# --- the flow and the queue ------------------------------------------------------------------------------


def prefect_fields(message: str) -> list[str]:
    """Fields of a ParameterTypeError (" - job.clip_prompts.0.duration: ..."), as clip_prompts[0].duration."""
    fields = []
    for loc in re.findall(r"^ - (\S+?): ", message, re.MULTILINE):
        path = ""
        for part in loc.split("."):
            path += f"[{part}]" if part.isdigit() else (f".{part}" if path else part)
        fields.append(path.removeprefix("job.") if path != "job" else path)
    return fields


def queue_fields(problems: list[str]) -> list[str]:
    return [p.removeprefix("job.") if p != "job" else p for p in problems]


def flow_parameters(case: Case) -> dict[str, Any]:
    return {"job": case.document, "options": case.options, "provider": "counting", "store": "local"}


def resolver(cache_dir: Path) -> Callable[[str, str], Path]:
    resolve = functools.partial(resolve_reference, cache_dir=cache_dir)

    def no_network(ref: str, field: str) -> Path:
        assert not ref.lower().startswith(("http:", "https:")), ref  # the corpus never fetches
        return resolve(ref, field)

    return no_network


@pytest.fixture
def quiet_parameter_errors() -> Iterator[None]:
    """Prefect logs each refused parameter set in full (megabytes over the corpus); the error is enough."""
    logger = logging.getLogger("prefect.flows")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


@pytest.mark.usefixtures("quiet_parameter_errors")
@pytest.mark.parametrize("kind", API_KINDS)
@given(data=st.data())
@settings(max_examples=8, **HYPOTHESIS)
def test_the_flow_and_the_queue_refuse_a_job_with_one_thing_broken(
    kind: str, data: st.DataObject, tmp_path: Path
) -> None:
    case = data.draw(api_cases("single", kind), label="case")
    assume(case.breaks)
    check_flow_and_queue(case, tmp_path / "cache")


@pytest.mark.usefixtures("quiet_parameter_errors")
@given(case=api_cases())
@settings(max_examples=120, **HYPOTHESIS)
def test_the_flow_and_the_queue_refuse_exactly_the_broken_jobs(case: Case, tmp_path: Path) -> None:
    check_flow_and_queue(case, tmp_path / "cache")


def check_flow_and_queue(case: Case, cache_dir: Path) -> None:
    from prefect.exceptions import ParameterTypeError

    from flows.video_generator import generate_video_clips

    # The flow: its parameter validation, then its plan (both before any clip task).
    broken = case.broken("flow")
    try:
        parameters = generate_video_clips.validate_parameters(flow_parameters(case))
    except ParameterTypeError as exc:
        event("flow: parameters refused")
        assert any(b.level in ("job", "options") for b in broken), f"refused a valid job: {exc}"
        assert_names_only_broken_fields(prefect_fields(str(exc)), case, "flow")
    else:
        assert not any(b.level in ("job", "options") for b in broken), f"accepted {broken}"
        options = parameters.get("options") or Settings().default_options()
        try:
            plan = plan_job(parameters["job"], options, resolver(cache_dir))
        except ValidationError as exc:
            event("flow: plan refused")
            assert broken, f"refused a valid job: {exc}"
            assert_names_only_broken_fields([p.field for p in exc.problems], case, "flow")
        else:
            event("flow: planned")
            assert not broken, f"planned a broken job: {broken}"
            assert len(plan.clips) == case.clips

    # The queue: a claimed row, parsed before anything runs.
    if not isinstance(case.document, dict) or not (case.options is None or isinstance(case.options, dict)):
        return  # a row holds a JSON object for each
    job_id = case.row_job_id or _job_id_of(case.document)
    row = QueuedJob(
        job_id=job_id,
        job=case.document,
        options=case.options,
        status="running",
        attempts=1,
        max_attempts=3,
        available_at=datetime.now(UTC),
        claim_token=uuid.uuid4(),
    )
    broken = case.broken("queue")
    try:
        parse_queued_job(row)
    except ValidationError as exc:
        event("queue: refused")
        assert broken, f"refused a valid row: {exc}"
        assert_names_only_broken_fields(queue_fields([p.field for p in exc.problems]), case, "queue")
    else:
        event("queue: accepted")
        assert not broken, f"accepted a broken row: {broken}"


def encodable(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
    if isinstance(value, dict):
        return all(encodable(k) and encodable(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(encodable(item) for item in value)
    return True


def _job_id_of(document: dict[str, Any]) -> uuid.UUID:
    try:
        return uuid.UUID(str(document.get("job_id")))
    except ValueError:
        return uuid.uuid4()


@pytest.mark.usefixtures("prefect_logs_here")
@given(case=api_cases())
@settings(max_examples=6, **HYPOTHESIS)
def test_flow_runs_refuse_broken_jobs_without_a_call(case: Case) -> None:
    from prefect.exceptions import ParameterTypeError

    from flows.video_generator import generate_video_clips

    # Prefect serializes the parameters to create the run, before it validates them: a lone surrogate fails
    # there (UnicodeEncodeError), in Prefect's client. Callers hand the flow a checked ClipPrompts (the CLI,
    # the queue flow) or JSON, which cannot carry one; the model refusing them is covered above.
    assume(encodable((case.document, case.options)))
    PROVIDERS.clear()
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as env:
        env.setenv("VIDEO_GENERATOR_DATA_DIR", tmp)
        state = generate_video_clips(case.document, case.options, "counting", "local", return_state=True)
        result = state.result(raise_on_failure=False)
    broken = case.broken("flow")
    event(f"flow run: {'refused' if broken else 'completed'}")
    if not broken:
        assert state.is_completed(), state.message
        assert paid_calls() == case.clips
        return
    assert state.is_failed()
    assert paid_calls() == 0
    if isinstance(result, ParameterTypeError):
        assert_names_only_broken_fields(prefect_fields(str(result)), case, "flow")
    else:
        assert isinstance(result, ValidationError), repr(result)
        assert_names_only_broken_fields([p.field for p in result.problems], case, "flow")


# --- what the corpus found, one test each ----------------------------------------------------------------

JOB_ID = "7d1c2a9e-4b6f-4f0e-9a51-3c2b8e1f0a66"


def one_clip_job(**changes: Any) -> dict[str, Any]:
    prompt = {"clip_index": 0, "prompt": "a meadow at dawn", "duration": 4.0} | changes
    return {"job_id": JOB_ID, "clip_prompts": [prompt]}


def refusal(document: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The problem lines of `run` on this job: it must refuse it, before any call and without a traceback."""
    PROVIDERS.clear()
    path = tmp_path / "job.json"
    path.write_text(json.dumps(document))
    assert main(["run", str(path), "--provider", "counting"]) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and paid_calls() == 0
    assert err.startswith("video-generator: refused"), err
    return [line.strip() for line in err.splitlines()[1:]]


def test_a_duplicate_clip_index_is_named_on_clip_prompts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = one_clip_job()
    job["clip_prompts"].append(job["clip_prompts"][0] | {"prompt": "the same index"})
    # Was "job: Value error, clip_index 0 appears more than once".
    assert refusal(job, tmp_path, capsys) == [
        "clip_prompts: Value error, clip_index 0 appears more than once (clip_prompts[0] and clip_prompts[1])"
    ]


def test_a_wrong_total_clips_is_named_total_clips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Was "job: Value error, total_clips is 3 but ...".
    assert refusal(one_clip_job() | {"total_clips": 3}, tmp_path, capsys) == [
        "total_clips: Value error, total_clips is 3 but clip_prompts has 1 entries"
    ]


def test_a_generation_time_of_the_wrong_type_is_one_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Was two problems on fields that do not exist: generation_time.float and generation_time.str.
    assert refusal(one_clip_job() | {"generation_time": [1.5]}, tmp_path, capsys) == [
        "generation_time: Value error, must be a number, a string or null"
    ]


@pytest.mark.parametrize("index", [MAX_CLIP_INDEX + 1, 2**63])
def test_a_clip_index_the_stores_cannot_hold_is_refused(
    index: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Was accepted: the clip was generated (paid for) and then its row failed, in Supabase (a PostgreSQL
    # integer) above 2**31 - 1 and in SQLite ("Python int too large to convert to SQLite INTEGER") from 2**63.
    assert refusal(one_clip_job(clip_index=index), tmp_path, capsys) == [
        "clip_prompts[0].clip_index: Input should be less than or equal to 2147483647"
    ]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"prompt": "a lone surrogate \ud800"}, "clip_prompts[0].prompt"),
        ({"negative_prompt": "\udfff"}, "clip_prompts[0].negative_prompt"),
        ({"metadata": {"scene": ["ok", "\udfff"]}}, "clip_prompts[0].metadata"),
        ({"metadata": {"\ud800": 1}}, "clip_prompts[0].metadata"),
        ({"character_reference_urls": ["\ud800.png"]}, "clip_prompts[0].character_reference_urls[0]"),
        ({"prompt": "a NUL \x00 inside"}, "clip_prompts[0].prompt"),
        ({"metadata": {"note": "\x00"}}, "clip_prompts[0].metadata"),
    ],
)
def test_text_no_store_or_api_can_hold_is_refused(
    changes: dict[str, Any], field: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A lone surrogate (JSON "\ud800") was accepted, and `run` then died with a UnicodeEncodeError traceback
    # in Prefect's client, creating the flow run. NUL was accepted; PostgreSQL text and jsonb refuse it.
    problems = refusal(one_clip_job(**changes), tmp_path, capsys)
    assert len(problems) == 1 and problems[0].startswith(f"{field}: Value error, "), problems


def test_generation_time_text_is_checked_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    problems = refusal(one_clip_job() | {"generation_time": "12 s \ud800"}, tmp_path, capsys)
    assert problems == [
        "generation_time: Value error, must be valid Unicode text; it has an unpaired surrogate '\\ud800'"
    ]


def test_a_duration_that_is_not_a_number_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Was "Input should be less than or equal to 60" for NaN (json.loads reads NaN).
    document = one_clip_job(duration=math.nan)
    assert refusal(document, tmp_path, capsys) == [
        "clip_prompts[0].duration: Input should be a finite number"
    ]


@pytest.mark.parametrize("reference", UNPARSEABLE_REFERENCES)
def test_a_reference_urlsplit_cannot_parse_is_refused_by_the_model(reference: str, tmp_path: Path) -> None:
    # Was accepted by the model; planning's resolve_reference then raised a bare ValueError ("Invalid IPv6
    # URL") inside the flow run, which the queue counted as worth another run.
    document = one_clip_job(scene_reference_url=reference)
    row = QueuedJob(
        job_id=uuid.UUID(JOB_ID),
        job=document,
        status="running",
        attempts=1,
        max_attempts=3,
        available_at=datetime.now(UTC),
    )
    with pytest.raises(ValidationError) as caught:
        parse_queued_job(row)
    assert [p.field for p in caught.value.problems] == ["job.clip_prompts[0].scene_reference_url"]
    assert "not a URL, data: URI, store:// reference or path" in str(caught.value)


def test_a_job_file_that_is_not_utf8_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "job.json"
    path.write_bytes(b'{"job_id": "\xff\xfe"}')
    assert main(["run", str(path), "--provider", "counting"]) == 2
    assert capsys.readouterr().err.startswith(
        "video-generator: refused, nothing was generated:\n  JOB.json: "
    )
