"""Every published schema we hold (../shared/reference/replicate-models/, shipped in clipgen/model_schemas/):
for a job with and without a start image, at 16:9 and 9:16, each model either plans a request its schema
accepts, in the requested shape, or is refused before any call with the input or job field named.

Catalog models are planned by key; the others as `owner/name` with their schema, as `--model` runs them."""

from __future__ import annotations

import json
from pathlib import Path
from uuid import uuid4

import pytest
from PIL import Image

import clipgen
from clipgen.catalog import MODELS
from clipgen.errors import ValidationError
from clipgen.job import ClipPrompts, GenerationOptions
from clipgen.media import matches_aspect
from clipgen.model_inputs import build_request
from clipgen.model_schema import InputSchema
from clipgen.planning import plan_job

SCHEMA_FILES = sorted((Path(clipgen.__file__).parent / "model_schemas").glob("*.json"))
SHARED = Path(__file__).resolve().parents[2] / "shared" / "reference" / "replicate-models"
BY_MODEL = {spec.replicate_model: key for key, spec in MODELS.items()}
NAMED = ("options.model", "options.aspect_ratio", "clip_prompts[0].")


def test_we_ship_every_shared_schema() -> None:
    if not SHARED.is_dir():
        pytest.skip("../shared is not beside this checkout")
    shared = {path.name: json.loads(path.read_text()) for path in SHARED.glob("*.json")}
    ours = {path.name: json.loads(path.read_text()) for path in SCHEMA_FILES}
    assert ours == shared


def _job(scene: str | None) -> ClipPrompts:
    clip = {"clip_index": 0, "prompt": "a lighthouse at dusk", "duration": 5, "scene_reference_url": scene}
    return ClipPrompts.model_validate({"job_id": str(uuid4()), "clip_prompts": [clip]})


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "scene.png"
    Image.new("RGB", (1600, 1200), (90, 120, 160)).save(path)
    return path


@pytest.mark.parametrize("with_image", [False, True], ids=["text", "image"])
@pytest.mark.parametrize("ratio", ["16:9", "9:16"])
@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda path: path.stem)
def test_each_schema_plans_a_valid_request_or_refuses_naming_the_field(
    path: Path, ratio: str, with_image: bool, photo: Path
) -> None:
    schema = InputSchema.from_file(json.loads(path.read_text()))
    model = BY_MODEL.get(schema.model, schema.model)
    options = GenerationOptions(model=model, aspect_ratio=ratio)
    job = _job(str(photo) if with_image else None)
    try:
        plan = plan_job(job, options, lambda ref, field: Path(ref), None if model in MODELS else schema)
    except ValidationError as refused:
        assert refused.problems
        for problem in refused.problems:
            assert problem.field.startswith(NAMED), problem
            assert problem.message
        return
    clip = plan.clips[0]
    assert matches_aspect(clip.width, clip.height, ratio, 0.02)
    request = build_request(clip, lambda *_: "https://example.invalid/scene.png")
    assert schema.problems(request.input) == []
    assert request.model == schema.model


def test_a_catalog_model_is_refused_only_for_what_it_cannot_do(photo: Path) -> None:
    # Kling v2.6 takes both ratios, with or without an image: nothing here may be refused.
    for ratio in ("16:9", "9:16"):
        for scene in (None, str(photo)):
            plan_job(
                _job(scene), GenerationOptions(model="kling-v2.6", aspect_ratio=ratio), lambda r, f: Path(r)
            )
