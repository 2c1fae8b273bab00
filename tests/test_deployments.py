"""prefect.yaml points at loadable flows whose parameters Prefect can render as a form, and
deployments/serve.py serves the same deployments (names, schedules, limits) from one process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint
from prefect.utilities.callables import parameter_schema

from clipgen.backends import known_providers, known_stores
from clipgen.catalog import MODELS
from clipgen.job import GenerationOptions
from clipgen.run_form import OWNER_NAME_PATTERN
from clipgen.run_parameters import BUILT_IN_PROVIDERS, BUILT_IN_STORES
from deployments.checkout import HOME_VARIABLE, CheckoutNotFound, deployed_from, enter_checkout
from deployments.serve import deployment_configs, runner_deployments
from tests.conftest import REPO


def deployments() -> dict[str, dict[str, Any]]:
    return {config["name"]: config for config in deployment_configs()}


def test_no_secrets_in_prefect_yaml() -> None:
    text = (REPO / "prefect.yaml").read_text().lower()
    for name in ("replicate_api_token", "supabase_service_role_key", "r8_", "eyj"):
        assert f"{name}:" not in text and f"{name}=" not in text
    assert "r8_" not in text and "eyj" not in text  # Replicate tokens and JWTs


def test_the_on_demand_deployment_takes_the_typed_job_and_options() -> None:
    config = deployments()["video-generator-on-demand"]
    assert config["enforce_parameter_schema"] is True
    flow = load_flow_from_entrypoint(str(REPO / config["entrypoint"]))
    assert flow.name == "generate-video-clips"
    schema = parameter_schema(flow.fn).model_dump()
    assert schema["required"] == ["job"]
    assert {"ClipPrompts", "ClipPrompt", "GenerationOptions"} <= set(schema["definitions"])


def test_the_queue_deployment_runs_every_minute_with_bounded_parallel_runs() -> None:
    config = deployments()["video-generator-queue"]
    flow = load_flow_from_entrypoint(str(REPO / config["entrypoint"]))
    assert flow.name == "process-video-job-queue"
    assert config["schedules"] == [{"cron": "* * * * *", "timezone": "UTC", "active": True}]
    assert config["concurrency_limit"]["collision_strategy"] == "CANCEL_NEW"
    schema = parameter_schema(flow.fn).model_dump()
    assert schema["properties"]["max_jobs"]["minimum"] == 1
    assert config["parameters"]["max_jobs"] >= 1
    # The same choices as the on-demand form, defaulting to the worker's settings.
    assert schema["properties"]["provider"]["enum"] == ["worker-default", *BUILT_IN_PROVIDERS]
    assert schema["properties"]["store"]["enum"] == ["worker-default", *BUILT_IN_STORES]
    assert schema["properties"]["store"]["default"] == "worker-default"


def test_every_deployment_uses_the_process_pool() -> None:
    raw = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert {d["work_pool"]["name"] for d in raw["deployments"]} == {"video-generator"}


def test_serve_builds_the_same_deployments() -> None:
    served = {d.name: d for d in runner_deployments()}
    assert set(served) == set(deployments())
    queue = served["video-generator-queue"]
    assert [s.schedule.cron for s in queue.schedules] == ["* * * * *"]  # type: ignore[union-attr]
    assert queue.concurrency_limit == 2
    assert queue.concurrency_options is not None
    assert queue.concurrency_options.collision_strategy == "CANCEL_NEW"
    assert queue.parameters == {"max_jobs": 100}
    assert served["video-generator-on-demand"].enforce_parameter_schema
    assert not served["video-generator-on-demand"].schedules


def test_the_run_form_shows_choices_and_defaults_as_values() -> None:
    """The schema the UI renders (the e2e test reads the same from the API after `prefect deploy`)."""
    flow = load_flow_from_entrypoint(str(REPO / deployments()["video-generator-on-demand"]["entrypoint"]))
    schema = parameter_schema(flow.fn).model_dump()
    parameters = schema["properties"]
    options = schema["definitions"]["GenerationOptions"]["properties"]
    catalog, any_model = options["model"]["anyOf"]
    assert (catalog["title"], catalog["enum"]) == ("Catalog model", list(MODELS))
    assert (any_model["title"], any_model["pattern"]) == ("Any Replicate video model", OWNER_NAME_PATTERN)
    assert options["model"]["default"] == "kling-v2.5-turbo"
    assert set(options["aspect_ratio"]["enum"]) == {r for spec in MODELS.values() for r in spec.aspect_ratios}
    assert parameters["provider"]["enum"] == ["worker-default", *BUILT_IN_PROVIDERS]
    assert parameters["store"]["enum"] == ["worker-default", *BUILT_IN_STORES]
    assert set(BUILT_IN_PROVIDERS) <= set(known_providers())
    assert set(BUILT_IN_STORES) <= set(known_stores())
    assert parameters["options"]["default"] == GenerationOptions().model_dump(mode="json")
    assert {parameters["provider"]["default"], parameters["store"]["default"]} == {"worker-default"}
    # No `null` to toggle: the UI would show options as "None" until switched.
    assert "anyOf" not in parameters["options"] and "anyOf" not in parameters["provider"]
    assert options["clip_timeout_s"]["anyOf"][1] == {"type": "null", "title": "Model's own"}


def test_the_pull_step_enters_the_checkout_deployed_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    deployed = deployed_from()["directory"]
    assert deployed == str(REPO)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(HOME_VARIABLE, raising=False)
    assert enter_checkout(deployed) == {"directory": str(REPO)}
    assert Path.cwd() == REPO


def test_video_generator_home_on_the_worker_overrides_the_deployed_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "srv" / "video-generator"
    (elsewhere / "flows").mkdir(parents=True)
    (elsewhere / "flows" / "video_generator.py").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(HOME_VARIABLE, str(elsewhere))
    assert enter_checkout("/where/it/was/deployed") == {"directory": str(elsewhere)}

    monkeypatch.setenv(HOME_VARIABLE, str(tmp_path / "nothing"))
    with pytest.raises(CheckoutNotFound, match=r"VIDEO_GENERATOR_HOME=.*nothing .*fix VIDEO_GENERATOR_HOME"):
        enter_checkout(str(REPO))
    monkeypatch.delenv(HOME_VARIABLE)
    with pytest.raises(CheckoutNotFound, match=r"deployment's path /gone .*set VIDEO_GENERATOR_HOME"):
        enter_checkout("/gone")


def test_prefect_yaml_wires_the_checkout_steps() -> None:
    raw = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert raw["build"] == [{"deployments.checkout.deployed_from": {"id": "checkout"}}]
    assert raw["pull"] == [
        {"deployments.checkout.enter_checkout": {"deployed_from": "{{ checkout.directory }}"}}
    ]
