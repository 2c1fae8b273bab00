"""Duration planning, the catalog's facts, job validation and the acceptance rule: pure functions."""

from __future__ import annotations

import functools
from pathlib import Path
from uuid import uuid4

import pytest

from clipgen.catalog import MODELS, get_model
from clipgen.errors import ClipShapeMismatch, ClipTooShort, ValidationError
from clipgen.job import Clip, ClipPrompts, GenerationOptions
from clipgen.planning import check_delivered, plan_job, requested_duration


@pytest.mark.parametrize(
    ("model", "target", "expected"),
    [
        ("kling-v2.5-turbo", 4.5, 5.0),  # smallest >= target
        ("kling-v2.5-turbo", 5.0, 5.0),
        ("kling-v2.5-turbo", 5.5, 10.0),
        ("kling-v2.5-turbo", 12.0, 10.0),  # none >= target: the largest
        ("hailuo-2.3", 5.0, 6.0),  # Hailuo has no 5 s: it rejects it
        ("veo-3.1", 5.0, 6.0),  # Veo 3.1 is discrete 4|6|8, not continuous
        ("veo-3.1", 7.0, 8.0),
        ("cogvideox", 3.0, 49 / 8),
    ],
)
def test_discrete_models_take_the_smallest_duration_at_or_above_target(
    model: str, target: float, expected: float
) -> None:
    assert requested_duration(get_model(model), target, 1.25) == pytest.approx(expected)


def test_continuous_models_apply_the_buffer_within_their_range() -> None:
    svd = get_model("svd")
    assert requested_duration(svd, 2.0, 1.25) == pytest.approx(2.5)
    assert requested_duration(svd, 2.0, 1.5) == pytest.approx(3.0)
    assert requested_duration(svd, 4.0, 1.25) == pytest.approx(25 / 6)  # clamped to the model's longest
    assert requested_duration(svd, 0.1, 1.25) == pytest.approx(25 / 31)  # and its shortest


def test_catalog_has_the_seven_models_with_schema_facts() -> None:
    assert set(MODELS) >= {
        "kling-v2.1",
        "kling-v2.5-turbo",
        "hailuo-2.3",
        "wan-2.5-i2v",
        "veo-3.1",
        "svd",
        "cogvideox",
    }
    assert get_model("kling-v2.1").requires_image
    assert get_model("wan-2.5-i2v").requires_image
    assert get_model("svd").requires_image and not get_model("svd").takes_prompt
    assert get_model("veo-3.1").aspect_ratios == ("16:9", "9:16")
    assert "4:3" not in get_model("kling-v2.5-turbo").aspect_ratios
    for spec in MODELS.values():
        for ratio in spec.aspect_ratios:
            w, h = spec.output_sizes[ratio]
            rw, rh = (int(x) for x in ratio.split(":"))
            assert w % 2 == 0 and h % 2 == 0
            assert w / h == pytest.approx(rw / rh, rel=0.01), (spec.key, ratio)
    assert get_model("veo-3.1").cost(8) == pytest.approx(1.6)  # audio off: $0.20/s


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match=r"known: kling-v2\.1, kling-v2\.5-turbo"):
        get_model("sora")


def job(*durations: float, scene: str | None = None) -> ClipPrompts:
    return ClipPrompts.model_validate(
        {
            "job_id": str(uuid4()),
            "clip_prompts": [
                {"clip_index": i, "prompt": "p", "duration": d, "scene_reference_url": scene}
                for i, d in enumerate(durations)
            ],
        }
    )


def no_images(ref: str, field: str) -> Path:
    raise AssertionError(f"no image expected, got {field}")


def test_plan_keeps_original_target_and_estimates_cost() -> None:
    plan = plan_job(job(4.5, 7.0), GenerationOptions(model="kling-v2.5-turbo"), no_images)
    assert [(c.target_duration, c.requested_duration) for c in plan.clips] == [(4.5, 5.0), (7.0, 10.0)]
    assert plan.estimated_cost == pytest.approx(0.07 * 15)
    assert plan.min_success == 2  # min(3, number of clips)
    assert (plan.clips[0].width, plan.clips[0].height) == (1920, 1080)


def test_budget_refuses_an_expensive_job() -> None:
    with pytest.raises(
        ValidationError, match=r"options.budget_usd: the estimate \$1.05 exceeds the budget \$1.00"
    ):
        plan_job(job(4.5, 7.0), GenerationOptions(budget_usd=1.0), no_images)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ValidationError) as caught:
        plan_job(job(12.5, 13.0), GenerationOptions(model="wan-2.5-i2v"), no_images)
    fields = [p.field for p in caught.value.problems]
    assert fields == [
        "clip_prompts[0].duration",
        "clip_prompts[0].scene_reference_url",
        "clip_prompts[1].duration",
        "clip_prompts[1].scene_reference_url",
    ]


def test_acceptance_rule() -> None:
    plan = plan_job(job(7.0), GenerationOptions(), no_images).clips[0]
    check_delivered(plan, 5.0, 1920, 1080)  # exactly target - 2 s is accepted
    with pytest.raises(ClipTooShort):
        check_delivered(plan, 4.99, 1920, 1080)
    with pytest.raises(ClipShapeMismatch):
        check_delivered(plan, 10.0, 1080, 1920)


def test_clip_defaults_original_target_for_old_producers() -> None:
    clip = Clip.model_validate({"clip_index": 0, "target_duration": 5.0, "status": "failed"})
    assert clip.original_target_duration == 5.0


def test_unknown_job_fields_are_ignored() -> None:
    data = job(3.0).model_dump(mode="json") | {"pipeline_version": 7}
    data["clip_prompts"][0]["style"] = "noir"
    assert ClipPrompts.model_validate(data).total_clips == 1


ANY_MODEL_JOB = Path(__file__).resolve().parents[1] / "examples" / "any-model.json"


@pytest.mark.parametrize("model", list(MODELS))
def test_the_any_model_example_plans_on_every_model_with_its_default_ratio(
    model: str, tmp_path: Path
) -> None:
    from clipgen.job_files import read_job
    from clipgen.references import resolve_reference

    job = read_job(ANY_MODEL_JOB, tmp_path).job  # its images staged in the cache at tmp_path
    resolve = functools.partial(resolve_reference, cache_dir=tmp_path)
    plan = plan_job(job, GenerationOptions(model=model), resolve)
    assert len(plan.clips) == 3
    assert plan.aspect_ratio == ("16:9" if "16:9" in MODELS[model].aspect_ratios else "3:2")


def test_a_ratio_given_is_kept_even_when_the_model_lacks_it() -> None:
    assert GenerationOptions(model="cogvideox").aspect_ratio == "3:2"
    assert GenerationOptions(model="cogvideox", aspect_ratio="16:9").aspect_ratio == "16:9"
    assert GenerationOptions.model_validate({"model": "veo-3.1"}).aspect_ratio == "16:9"
