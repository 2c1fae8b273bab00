"""Serve both deployments from one long-running process: the simplest production path (no work pool).

    PREFECT_API_URL=http://HOST:4200/api python deployments/serve.py

Runs are executed in this process's environment (REPLICATE_API_TOKEN, SUPABASE_* ...). The deployments are
read from prefect.yaml, so names, schedules, parameters and limits are the same whether they are served
here or deployed to a work pool with `prefect deploy --all`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]  # PyYAML comes with Prefect; it has no stubs

REPO = Path(__file__).resolve().parent.parent
PREFECT_YAML = REPO / "prefect.yaml"
# What `prefect deploy` reads from a deployment that also means something to `serve`.
_SERVED_KEYS = (
    "description",
    "tags",
    "version",
    "parameters",
    "enforce_parameter_schema",
    "concurrency_limit",
)


def deployment_configs(path: Path = PREFECT_YAML) -> list[dict[str, Any]]:
    deployments = yaml.safe_load(path.read_text())["deployments"]
    assert isinstance(deployments, list)
    return deployments


def runner_deployments(path: Path = PREFECT_YAML) -> list[Any]:
    """Each deployment in prefect.yaml as a RunnerDeployment of its flow (the work pool is not used)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.flows import Flow, load_flow_from_entrypoint

    built = []
    for config in deployment_configs(path):
        flow: Flow[..., Any] = load_flow_from_entrypoint(str(REPO / config["entrypoint"]))
        options = {key: config[key] for key in _SERVED_KEYS if key in config}
        if isinstance(options.get("concurrency_limit"), dict):
            options["concurrency_limit"] = ConcurrencyLimitConfig.model_validate(options["concurrency_limit"])
        schedules = [_schedule(entry) for entry in config.get("schedules") or []]
        built.append(flow.to_deployment(name=config["name"], schedules=schedules or None, **options))
    return built


def _schedule(entry: dict[str, Any]) -> Any:
    from prefect.schedules import Cron, Interval

    active = entry.get("active", True)
    if "cron" in entry:
        return Cron(entry["cron"], timezone=entry.get("timezone"), active=active)
    if "interval" in entry:
        return Interval(entry["interval"], timezone=entry.get("timezone"), active=active)
    raise ValueError(f"prefect.yaml: a schedule needs cron or interval: {entry}")


def main() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The flows import flows.* and clipgen.*; run from anywhere.
    sys.path.insert(0, str(REPO))
    os.chdir(REPO)
    from prefect import serve

    serve(*runner_deployments())


if __name__ == "__main__":
    main()
