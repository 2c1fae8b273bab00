"""prefect.yaml points at loadable flows whose parameters Prefect can render as a form, and
deployments/serve.py serves the same deployments (names, schedules, limits) from one process."""

from __future__ import annotations

from typing import Any

import yaml
from prefect.flows import load_flow_from_entrypoint
from prefect.utilities.callables import parameter_schema

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


def test_every_deployment_uses_the_process_pool() -> None:
    raw = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert {d["work_pool"]["name"] for d in raw["deployments"]} == {"video-generator"}


def test_serve_builds_the_same_deployments() -> None:
    served = {d.name: d for d in runner_deployments()}
    assert set(served) == set(deployments())
    queue = served["video-generator-queue"]
    assert [s.schedule.cron for s in queue.schedules] == ["* * * * *"]  # type: ignore[union-attr]
    assert queue.concurrency_limit == 4
    assert queue.concurrency_options is not None
    assert queue.concurrency_options.collision_strategy == "CANCEL_NEW"
    assert queue.parameters == {"max_jobs": 10}
    assert served["video-generator-on-demand"].enforce_parameter_schema
    assert not served["video-generator-on-demand"].schedules
