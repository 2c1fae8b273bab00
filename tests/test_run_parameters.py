"""The flow's parameters on the worker: `worker-default` and options left out take the worker's settings,
what the caller sets is used as set (clipgen/run_parameters.py)."""

from __future__ import annotations

import pytest

from clipgen.job import GenerationOptions
from clipgen.run_parameters import WORKER_DEFAULT, backend_name, options_for_run
from clipgen.settings import Settings


@pytest.fixture
def worker_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("VIDEO_GENERATOR_CONCURRENCY", "9")
    monkeypatch.setenv("VIDEO_GENERATOR_MIN_CLIPS", "1")
    monkeypatch.setenv("VIDEO_GENERATOR_CLIP_TIMEOUT_SECONDS", "300")
    monkeypatch.setenv("VIDEO_GENERATOR_PROVIDER", "replicate")
    return Settings()


def test_options_left_out_take_the_workers_settings(worker_settings: Settings) -> None:
    options = options_for_run(GenerationOptions.model_validate({"model": "veo-3.1"}), worker_settings)
    assert (options.model, options.concurrency, options.min_success) == ("veo-3.1", 9, 1)
    assert options.clip_timeout_s == 300


def test_options_the_caller_sets_win_even_when_they_equal_the_built_in_default(
    worker_settings: Settings,
) -> None:
    # What the run form sends: every field, with the values it shows.
    sent = GenerationOptions().model_dump(mode="json")
    options = options_for_run(GenerationOptions.model_validate(sent), worker_settings)
    assert options == GenerationOptions()


def test_no_options_and_the_flows_default_are_the_workers_defaults(worker_settings: Settings) -> None:
    assert options_for_run(None, worker_settings) == worker_settings.default_options()
    assert options_for_run(GenerationOptions(), worker_settings) == worker_settings.default_options()


def test_worker_default_names_the_workers_backend(worker_settings: Settings) -> None:
    assert backend_name(WORKER_DEFAULT, worker_settings.provider) == "replicate"
    assert backend_name(None, worker_settings.provider) == "replicate"
    assert backend_name("local", worker_settings.provider) == "local"
    assert backend_name("tests.doubles:make_provider", worker_settings.provider) == (
        "tests.doubles:make_provider"
    )
