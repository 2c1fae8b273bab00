"""prefect.yaml points at a loadable flow whose parameters Prefect can render as a form."""

from __future__ import annotations

import yaml
from prefect.flows import load_flow_from_entrypoint
from prefect.utilities.callables import parameter_schema

from tests.conftest import REPO


def test_every_deployment_entrypoint_loads_with_a_typed_parameter_schema() -> None:
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert "secret" not in (REPO / "prefect.yaml").read_text().lower().replace("no secrets", "")
    for deployment in config["deployments"]:
        flow = load_flow_from_entrypoint(str(REPO / deployment["entrypoint"]))
        assert flow.name == "generate-video-clips"
        schema = parameter_schema(flow.fn).model_dump()
        assert schema["required"] == ["job"]
        assert {"ClipPrompts", "ClipPrompt", "GenerationOptions"} <= set(schema["definitions"])
