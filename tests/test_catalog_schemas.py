"""The catalog is built from the published schemas; the seven original models send exactly what they sent
before (recorded in tests/data/catalog_before_schemas.json from the hand-written builders)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from clipgen.catalog import MODELS
from clipgen.model_inputs import build_request
from clipgen.planning import ClipPlan

BEFORE = json.loads((Path(__file__).parent / "data" / "catalog_before_schemas.json").read_text())
SEVEN = ("kling-v2.1", "kling-v2.5-turbo", "hailuo-2.3", "wan-2.5-i2v", "veo-3.1", "svd", "cogvideox")
# Fields the schemas corrected: CogVideoX 5B's schema has no image input (the hand-written list had one, and
# its title promised image-to-video).
CORRECTED = {("cogvideox", "image_inputs"): [], ("cogvideox", "title"): "CogVideoX 5B (text to video)"}


def _uri(path: str, ratio: str, size: tuple[int, int]) -> str:
    return f"https://example.invalid/{path}?ratio={ratio}&size={size[0]}x{size[1]}"


def _recorded(value: Any) -> Any:
    """The recording's image URIs ("uri:<path>:<w>:<h>:<size>") in the form `_uri` gives them now."""
    if isinstance(value, list):
        return [_recorded(item) for item in value]
    if isinstance(value, str) and value.startswith("uri:"):
        _, path, ratio_w, ratio_h, size = value.split(":")
        return f"https://example.invalid/{path}?ratio={ratio_w}:{ratio_h}&size={size}"
    return value


def _plan(fields: dict[str, Any]) -> ClipPlan:
    return ClipPlan(job_id=uuid.UUID(int=1), clip_index=0, estimated_cost=0.0, **fields)


# A recorded input with a None in it is a plan that planning refuses (a required image missing).
PLANNABLE = [case for case in BEFORE["requests"] if None not in case["input"].values()]


@pytest.mark.parametrize("case", PLANNABLE, ids=lambda case: case["plan"]["model"])
def test_the_seven_send_what_they_sent(case: dict[str, Any]) -> None:
    request = build_request(_plan(case["plan"]), _uri)
    assert (request.model, request.version) == (case["model"], case["version"])
    assert request.input == {name: _recorded(value) for name, value in case["input"].items()}
    assert request.notes == case["notes"]


@pytest.mark.parametrize("key", SEVEN)
def test_the_seven_specs_are_unchanged(key: str) -> None:
    spec = MODELS[key]
    for name, before in BEFORE["specs"][key].items():
        now = getattr(spec, name)
        now = [list(v) if isinstance(v, tuple) else v for v in now] if isinstance(now, tuple) else now
        if isinstance(now, dict):
            now = {k: list(v) for k, v in now.items()}
        assert now == CORRECTED.get((key, name), before), name
