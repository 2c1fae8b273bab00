"""Where a worker runs the deployments' code: prefect.yaml's build and pull steps.

Prefect's own default (no pull step) is `set_working_directory` to the directory you deploy from. We keep that
default and add one thing Prefect's templating cannot: an override read on the worker when the run starts.
`{{ $VIDEO_GENERATOR_HOME }}` in prefect.yaml would have no default, so a deploy without it gave a deployment
whose runs crashed.

    build:  deployments.checkout.deployed_from  (id: checkout) -> {"directory": the checkout you deploy from}
    pull:   deployments.checkout.enter_checkout  (deployed_from: "{{ checkout.directory }}")

Both are small functions that import nothing of ours: workers import them before the flow's code.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_VARIABLE = "VIDEO_GENERATOR_HOME"
ENTRYPOINT = Path("flows") / "video_generator.py"
"""A file every checkout has: a directory without it is not a checkout of this project."""


class CheckoutNotFound(FileNotFoundError):
    """The pull step found no checkout where the deployment (or VIDEO_GENERATOR_HOME) says it is."""


def deployed_from() -> dict[str, str]:
    """Build step, run by `prefect deploy`: the absolute path it runs from (where prefect.yaml is)."""
    return {"directory": str(Path.cwd().resolve())}


def enter_checkout(deployed_from: str) -> dict[str, str]:
    """Pull step, run by the worker for each flow run: change into the checkout and return its path.

    VIDEO_GENERATOR_HOME, when this worker sets it, names the checkout here; otherwise it is where the
    deployment was made (`deployed_from`), as with Prefect's default pull step.
    """
    override = os.environ.get(HOME_VARIABLE, "").strip()
    directory = Path(override or deployed_from).expanduser()
    if not (directory / ENTRYPOINT).is_file():
        problem = _not_found(directory, override=bool(override), deployed_from=deployed_from)
        _tell_the_run(problem)
        raise CheckoutNotFound(problem)
    os.chdir(directory)
    return {"directory": str(Path.cwd())}


def _tell_the_run(problem: str) -> None:
    """Put the problem in the flow run's logs (the UI): Prefect 3.9 logs only "Executing deployment step"
    there and keeps a failing step's error for the worker's own output."""
    run_id = os.environ.get("PREFECT__FLOW_RUN_ID")
    if not run_id:
        return
    from uuid import UUID

    from prefect.logging.loggers import flow_run_logger

    flow_run_logger(flow_run_id=UUID(run_id)).error(problem)


def _not_found(directory: Path, *, override: bool, deployed_from: str) -> str:
    where = f"{HOME_VARIABLE}={directory}" if override else f"the deployment's path {directory}"
    advice = (
        f"fix {HOME_VARIABLE} on this worker, or unset it to use {deployed_from}"
        if override
        else f"this worker keeps the checkout elsewhere: set {HOME_VARIABLE} to its path in the worker's "
        "environment (or redeploy from that path)"
    )
    return f"no video-generator checkout at {where} (no {ENTRYPOINT} there): {advice}"
