"""prefect.yaml's deployments on a real Prefect server, run by a real process worker (tests/prefect_stack.py):
what an operator gets from `prefect deploy --all` and what someone pressing Run in the UI gets.

Saves a screenshot of the finished run in the Prefect UI to out/screenshots/prefect-ui-flow-run.png.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
import yaml
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.exceptions import PrefectHTTPStatusError
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from clipgen.catalog import MODELS
from clipgen.job import ClipPrompts, GenerationOptions
from clipgen.job_files import load_job
from clipgen.run_form import OWNER_NAME_PATTERN
from clipgen.stores.local import LocalStore
from tests.browser import SCREENSHOTS, headless_chromium
from tests.conftest import EXAMPLE_JOB, REPO
from tests.prefect_stack import ON_DEMAND, PrefectStack

pytest_plugins = ["tests.prefect_stack"]


def _example_job(stack: PrefectStack) -> ClipPrompts:
    """examples/job.json with a fresh job id (the stack is shared), its images in the stack's store."""
    job = load_job(EXAMPLE_JOB, LocalStore(stack.data_dir), stack.data_dir / "cache" / "references")
    return job.model_copy(update={"job_id": uuid4()})


@pytest.fixture(scope="module")
def finished_run(prefect_stack: PrefectStack) -> tuple[ClipPrompts, FlowRun]:
    """The example job run once through the on-demand deployment, for the tests that look at the result."""
    job = _example_job(prefect_stack)
    parameters = {"job": job.model_dump(mode="json"), "options": {"concurrency": 5}}
    return job, prefect_stack.run_deployment(ON_DEMAND, parameters)


def _one_clip_job() -> dict[str, Any]:
    clip = {"clip_index": 0, "prompt": "a lantern", "duration": 4.0}
    return {"job_id": str(uuid4()), "clip_prompts": [clip]}


def _runs_of(stack: PrefectStack, deployment_id: UUID) -> list[FlowRun]:
    with stack.client() as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])), limit=200
        )


def test_the_on_demand_deployment_enforces_a_typed_parameter_schema(prefect_stack: PrefectStack) -> None:
    with prefect_stack.client() as client:
        deployment = client.read_deployment_by_name(ON_DEMAND)
        pool = client.read_work_pool(deployment.work_pool_name or "")
    assert deployment.enforce_parameter_schema is True
    assert (deployment.work_pool_name, deployment.work_queue_name, pool.type) == (
        "video-generator",
        "default",
        "process",
    )
    schema = deployment.parameter_openapi_schema
    assert schema is not None
    assert schema["required"] == ["job"]
    assert {"ClipPrompts", "ClipPrompt", "GenerationOptions"} <= set(schema["definitions"])
    assert schema["properties"]["job"]["$ref"] == "#/definitions/ClipPrompts"
    options = json.dumps(schema["properties"]["options"])
    assert "#/definitions/GenerationOptions" in options
    # Deployed as docs/deployments.md says, no extra environment: runs start in the checkout deployed from.
    assert deployment.pull_steps == [
        {"deployments.checkout.enter_checkout": {"deployed_from": str(prefect_stack.repo)}}
    ]


def test_the_run_form_offers_choices_with_descriptions_and_defaults(prefect_stack: PrefectStack) -> None:
    """What the Prefect UI builds its run form from: the deployment's schema, as the API returns it."""
    with prefect_stack.client() as client:
        schema = client.read_deployment_by_name(ON_DEMAND).parameter_openapi_schema
    assert schema is not None
    parameters = schema["properties"]
    options = schema["definitions"]["GenerationOptions"]["properties"]
    # The model: a select of the catalog, or any Replicate model as owner/name (free text, a pattern).
    catalog, any_model = options["model"]["anyOf"]
    assert (catalog["type"], catalog["enum"]) == ("string", list(MODELS))
    assert (any_model["type"], any_model["pattern"]) == ("string", OWNER_NAME_PATTERN)
    assert "owner/name" in options["model"]["description"] and "owner/name" in any_model["description"]
    choices = {
        "model": catalog | {"default": options["model"]["default"]},
        "aspect_ratio": options["aspect_ratio"],
        "provider": parameters["provider"],
        "store": parameters["store"],
    }
    every_ratio = dict.fromkeys(ratio for spec in MODELS.values() for ratio in spec.aspect_ratios)
    assert choices["aspect_ratio"]["enum"] == list(every_ratio)
    assert choices["provider"]["enum"] == ["worker-default", "local", "replicate"]
    assert choices["store"]["enum"] == ["worker-default", "local", "supabase"]
    for name, choice in choices.items():
        assert choice["type"] == "string", name
        assert choice["default"] in choice["enum"], name
        assert len(choice["description"]) > 40, name
    assert "cogvideox: 3:2" in choices["aspect_ratio"]["description"]
    assert "VIDEO_GENERATOR_PROVIDER" in choices["provider"]["description"]
    # Defaults are values: the form opens with them filled in, not with a None to toggle.
    assert parameters["options"]["default"] == GenerationOptions().model_dump(mode="json")
    assert all("default" in option for option in options.values())
    assert "Use JSON input" in parameters["job"]["description"]
    assert schema["required"] == ["job"]
    # The form sorts fields by position: on PostgreSQL the stored schema's keys come back reordered.
    assert sorted(options, key=lambda name: options[name]["position"]) == list(GenerationOptions.model_fields)


def test_a_run_with_the_forms_defaults_completes(prefect_stack: PrefectStack) -> None:
    """Run pressed with only a job filled in: the form sends its defaults (provider and store
    `worker-default`, the default options); an API call may send the job alone."""
    with prefect_stack.client() as client:
        schema = client.read_deployment_by_name(ON_DEMAND).parameter_openapi_schema
    assert schema is not None
    defaults = {name: p["default"] for name, p in schema["properties"].items() if "default" in p}
    for parameters in ({"job": _one_clip_job()} | defaults, {"job": _one_clip_job()}):
        run = prefect_stack.run_deployment(ON_DEMAND, parameters)
        assert run.state is not None
        assert run.state.type == StateType.COMPLETED, prefect_stack.flow_run_logs(run.id)
        assert run.state.message == "1/1 clips"


def test_a_run_from_the_deployment_makes_every_clip(
    prefect_stack: PrefectStack, finished_run: tuple[ClipPrompts, FlowRun]
) -> None:
    job, run = finished_run
    assert run.state is not None
    assert run.state.type == StateType.COMPLETED, prefect_stack.flow_run_logs(run.id)
    assert run.state.message == "6/6 clips"
    assert run.name == f"video-clips-{job.job_id}"

    progress = prefect_stack.artifact(f"video-clips-{job.job_id}")
    assert progress is not None
    assert (progress["type"], progress["data"], progress["flow_run_id"]) == ("progress", 100, str(run.id))
    assert progress["description"] == "6/6 clips"
    table = prefect_stack.artifact(f"video-clips-{job.job_id}-table")
    assert table is not None
    assert (table["type"], table["description"], table["flow_run_id"]) == ("table", "6/6 clips", str(run.id))
    rows = json.loads(table["data"])
    assert [(row["clip"], row["status"]) for row in rows] == [(i, "success") for i in range(6)]

    # The worker's flow run wrote to the stack's data dir, not to this process's.
    records = LocalStore(prefect_stack.data_dir).clip_records(job.job_id)
    assert sorted((r.clip_index, r.status) for r in records) == [(i, "success") for i in range(6)]
    assert all(r.actual_duration and r.video_path for r in records)
    clips = prefect_stack.data_dir / "storage" / "video-clips" / str(job.job_id)
    assert sorted(p.name for p in clips.glob("*.mp4")) == [f"clip_{i}.mp4" for i in range(6)]


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        (
            lambda job: job["clip_prompts"][0].update(duration="long"),
            "Error creating flow run: Validation failed for field 'job.clip_prompts[0].duration'. "
            "Failure reason: 'long' is not of type 'number'",
        ),
        (
            lambda job: job.clear(),
            "Error creating flow run: Validation failed for field 'job'. "
            "Failure reason: 'job_id' is a required property",
        ),
    ],
    ids=["duration-not-a-number", "empty-job"],
)
def test_the_server_refuses_a_run_whose_parameters_break_the_schema(
    prefect_stack: PrefectStack, change: Any, detail: str
) -> None:
    job = _example_job(prefect_stack).model_dump(mode="json")
    change(job)
    with prefect_stack.client() as client:
        deployment_id = client.read_deployment_by_name(ON_DEMAND).id
    before = len(_runs_of(prefect_stack, deployment_id))

    with pytest.raises(PrefectHTTPStatusError) as refused:
        prefect_stack.create_flow_run(ON_DEMAND, {"job": job})

    assert refused.value.response.status_code == 409
    assert refused.value.response.json() == {"detail": detail}
    assert len(_runs_of(prefect_stack, deployment_id)) == before, "a refused run must not exist"


def test_a_run_without_the_job_is_refused(prefect_stack: PrefectStack) -> None:
    with pytest.raises(PrefectHTTPStatusError) as refused:
        prefect_stack.create_flow_run(ON_DEMAND, {"options": {"concurrency": 5}})
    assert refused.value.response.status_code == 409
    assert refused.value.response.json() == {
        "detail": "Error creating flow run: Validation failed. Failure reason: 'job' is a required property"
    }


def test_an_extra_worker_takes_the_runs_of_its_queue_with_its_own_environment(
    prefect_stack: PrefectStack, tmp_path: Path
) -> None:
    """How other tests run a flow with settings of their own (e.g. SUPABASE_URL): a worker on a queue of
    its own, with more environment, and runs created in that queue."""
    other_data = tmp_path / "other-data"
    worker = prefect_stack.start_worker(
        "e2e-extra", work_queue="e2e-extra", env={"VIDEO_GENERATOR_DATA_DIR": str(other_data)}
    )
    job = ClipPrompts.model_validate(
        {"job_id": str(uuid4()), "clip_prompts": [{"clip_index": 0, "prompt": "a lantern", "duration": 4.0}]}
    )
    try:
        run = prefect_stack.run_deployment(
            ON_DEMAND, {"job": job.model_dump(mode="json")}, work_queue_name="e2e-extra"
        )
    finally:
        worker.stop()

    assert run.state is not None
    assert run.state.type == StateType.COMPLETED, prefect_stack.flow_run_logs(run.id)
    assert run.work_queue_name == "e2e-extra"
    assert [r.status for r in LocalStore(other_data).clip_records(job.job_id)] == ["success"]
    assert LocalStore(prefect_stack.data_dir).clip_records(job.job_id) == []
    assert not worker.alive()


def test_a_worker_whose_checkout_is_elsewhere_sets_video_generator_home(
    prefect_stack: PrefectStack, tmp_path: Path
) -> None:
    """The override is read by the worker when each run starts: runs go to its checkout, not the deployer's.
    A relative data dir shows where the run worked (it lands inside the override's checkout)."""
    elsewhere = tmp_path / "srv" / "video-generator"
    elsewhere.mkdir(parents=True)
    (elsewhere / "flows").symlink_to(REPO / "flows")  # this checkout's code, at another path
    worker = prefect_stack.start_worker(
        "e2e-elsewhere",
        work_queue="e2e-elsewhere",
        env={"VIDEO_GENERATOR_HOME": str(elsewhere), "VIDEO_GENERATOR_DATA_DIR": "relative-data"},
    )
    job = _one_clip_job()
    try:
        run = prefect_stack.run_deployment(ON_DEMAND, {"job": job}, work_queue_name="e2e-elsewhere")
    finally:
        worker.stop()

    assert run.state is not None
    assert run.state.type == StateType.COMPLETED, prefect_stack.flow_run_logs(run.id)
    records = LocalStore(elsewhere / "relative-data").clip_records(UUID(job["job_id"]))
    assert [r.status for r in records] == ["success"]
    assert not (REPO / "relative-data").exists()


def test_a_wrong_video_generator_home_ends_the_run_with_what_to_fix(
    prefect_stack: PrefectStack, tmp_path: Path
) -> None:
    missing = tmp_path / "no-checkout-here"
    worker = prefect_stack.start_worker(
        "e2e-wrong-home", work_queue="e2e-wrong-home", env={"VIDEO_GENERATOR_HOME": str(missing)}
    )
    try:
        run = prefect_stack.run_deployment(
            ON_DEMAND, {"job": _one_clip_job()}, work_queue_name="e2e-wrong-home"
        )
    finally:
        worker.stop()

    assert run.state is not None
    assert run.state.type in (StateType.CRASHED, StateType.FAILED)
    logs = prefect_stack.flow_run_logs(run.id)
    assert f"no video-generator checkout at VIDEO_GENERATOR_HOME={missing}" in logs, logs
    assert "fix VIDEO_GENERATOR_HOME on this worker" in logs, logs


def test_scheduled_deployments_get_their_runs(prefect_stack: PrefectStack) -> None:
    """Every deployment prefect.yaml gives an active schedule has runs scheduled by the server."""
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    scheduled = [
        d["name"]
        for d in config["deployments"]
        if any(s.get("active", True) for s in d.get("schedules") or [])
    ]
    with prefect_stack.client() as client:
        deployments = {d.name: d for d in client.read_deployments()}
    for name in scheduled:
        deployment = deployments[name]
        assert deployment.schedules and all(s.active for s in deployment.schedules)
        deadline = time.monotonic() + 30
        while not _runs_of(prefect_stack, deployment.id):
            assert time.monotonic() < deadline, (
                f"the scheduler made no run of {name} in 30 s; server errors:\n"
                + "\n".join(prefect_stack.server_errors()[-20:])
            )
            time.sleep(0.5)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    with headless_chromium(tmp_path / "chromium", window="1400,1000") as driver:
        yield driver


def test_the_prefect_ui_shows_the_finished_run(
    prefect_stack: PrefectStack, finished_run: tuple[ClipPrompts, FlowRun], browser: webdriver.Chrome
) -> None:
    job, run = finished_run
    # The page a worker's log links to ("View at ..."). The UI gets its API URL from /ui-settings, that is
    # PREFECT_SERVER_UI_API_URL, so everything it shows comes from this server.
    browser.get(f"{prefect_stack.ui_url}/runs/flow-run/{run.id}")
    title, badges, text = "", [], ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        title = browser.title
        badges = browser.execute_script(
            "return [...document.querySelectorAll('.state-badge')].map(b => b.textContent.trim())"
        )
        text = browser.execute_script("return document.body.innerText")
        # The last log line too: by then the page has loaded the run's logs and its task runs.
        if (
            title.startswith(f"Flow Run: video-clips-{job.job_id}")
            and "Completed" in badges
            and "Finished in state Completed('6/6 clips')" in text
        ):
            break
        time.sleep(0.25)
    time.sleep(2.0)  # the timeline (a canvas) draws its bars after the data arrives
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "prefect-ui-flow-run.png"))
    text = browser.execute_script("return document.body.innerText")
    assert title.startswith(f"Flow Run: video-clips-{job.job_id}"), title
    assert badges and badges[0] == "Completed", badges
    for shown in (f"video-clips-{job.job_id}", "generate-video-clips", "video-generator-on-demand"):
        assert shown in text, text[:2000]


# The form's field for a parameter, by its label (optional ones are labelled "name (Optional)").
_PROPERTY = """
return [...document.querySelectorAll('.schema-form-property')].find(
  p => p.querySelector('.schema-form-property__label')?.textContent.trim().replace(/ [(]Optional[)]$/, '')
    === arguments[0]);
"""


def test_the_run_form_in_the_ui_takes_a_pasted_job_and_runs_with_what_it_shows(
    prefect_stack: PrefectStack, browser: webdriver.Chrome
) -> None:
    """The deployment's Custom run page, as a user fills it: the choices show their defaults, the job is
    pasted as JSON (the field's menu, "Use JSON input"), Submit; the run gets the values shown, completes."""
    deployment_id = _open_run_form(prefect_stack, browser)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.set_window_size(1400, 2600)  # the whole form in one picture
    browser.save_screenshot(str(SCREENSHOTS / "prefect-ui-run-form.png"))
    selects = {
        label: browser.execute_script(_PROPERTY, label).find_element(By.CSS_SELECTOR, "select")
        for label in ("Model", "Aspect Ratio", "provider", "store")
    }
    assert {label: select.get_attribute("value") for label, select in selects.items()} == {
        "Model": "kling-v2.5-turbo",
        "Aspect Ratio": "16:9",
        "provider": "worker-default",
        "store": "worker-default",
    }
    labels = browser.execute_script(
        "return [...document.querySelectorAll('.schema-form-property__label')].map(l => l.textContent.trim())"
    )
    fields = GenerationOptions.model_json_schema()["properties"].values()
    titles = [f"{field['title']} (Optional)" for field in fields]
    assert [label for label in labels if label in titles] == titles, labels
    offered = selects["provider"].find_elements(By.TAG_NAME, "option")
    assert [option.get_attribute("value") for option in offered] == ["worker-default", "local", "replicate"]

    job = _one_clip_job()
    _paste_job_and_submit(browser, job)

    run = _wait_for_run_of_job(prefect_stack, deployment_id, job["job_id"], browser)
    assert run.parameters == {
        "job": job,
        "options": GenerationOptions().model_dump(mode="json"),
        "provider": "worker-default",
        "store": "worker-default",
    }
    finished = prefect_stack.wait_for_flow_run(run.id)
    assert finished.state is not None
    assert finished.state.type == StateType.COMPLETED, prefect_stack.flow_run_logs(run.id)


def test_the_run_form_takes_any_replicate_model_as_owner_name(
    prefect_stack: PrefectStack, browser: webdriver.Chrome
) -> None:
    """The Model field's other branch, free text: the run gets the owner/name pasted there. This worker has no
    REPLICATE_API_TOKEN to read the model's schema with, so the flow refuses it naming options.model."""
    deployment_id = _open_run_form(prefect_stack, browser)
    model = browser.execute_script(_PROPERTY, "Model")
    branches = model.find_elements(By.CSS_SELECTOR, ".p-button-group__button")
    assert [b.text.strip() for b in branches] == ["Catalog model", "Any Replicate video model"]
    branches[1].click()
    # The field is drawn again for the branch chosen: a text box in place of the select. The name is pasted
    # (one input event): the classic UI puts any string back under the first string branch as it changes,
    # so a name typed key by key would leave the text box after its first letter.
    deadline = time.monotonic() + 10
    while not (boxes := browser.execute_script(_PROPERTY, "Model").find_elements(By.TAG_NAME, "textarea")):
        assert time.monotonic() < deadline, browser.execute_script(_PROPERTY, "Model").text
        time.sleep(0.25)
    browser.execute_script(_PASTE, boxes[0], "pixverse/pixverse-v5")
    job = _one_clip_job()
    _paste_job_and_submit(browser, job)

    run = _wait_for_run_of_job(prefect_stack, deployment_id, job["job_id"], browser)
    assert run.parameters["options"]["model"] == "pixverse/pixverse-v5"
    finished = prefect_stack.wait_for_flow_run(run.id)
    assert finished.state is not None and finished.state.type == StateType.FAILED
    # The run's last lines reach the server from the worker's process after its state does: wait for them.
    deadline = time.monotonic() + 60
    while "options.model: pixverse/pixverse-v5 is not in the catalog" not in (
        logs := prefect_stack.flow_run_logs(run.id)
    ):
        assert time.monotonic() < deadline, logs
        time.sleep(0.5)


_PASTE = """
arguments[0].value = arguments[1];
arguments[0].dispatchEvent(new Event('input', {bubbles: true}));
"""


def _open_run_form(stack: PrefectStack, browser: webdriver.Chrome) -> UUID:
    """The on-demand deployment's Custom run page, loaded; the deployment's id."""
    with stack.client() as client:
        deployment = client.read_deployment_by_name(ON_DEMAND)
    browser.get(f"{stack.ui_url}/deployments/deployment/{deployment.id}/run")
    deadline = time.monotonic() + 60
    while not browser.execute_script(_PROPERTY, "store"):
        assert time.monotonic() < deadline, browser.execute_script("return document.body.innerText")[:2000]
        time.sleep(0.25)
    return deployment.id


def _paste_job_and_submit(browser: webdriver.Chrome, job: dict[str, Any]) -> None:
    """The job pasted as JSON (the field's menu, "Use JSON input"), then Submit."""
    browser.execute_script(_PROPERTY, "job").find_element(
        By.CSS_SELECTOR, ".schema-form-property-menu button"
    ).click()
    menu = browser.find_elements(By.CSS_SELECTOR, ".p-overflow-menu-item")
    next(item for item in menu if item.text.strip() == "Use JSON input").click()
    _type_into_json_editor(browser, json.dumps(job), expect=job["job_id"])
    next(b for b in browser.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Submit").click()


def _type_into_json_editor(browser: webdriver.Chrome, text: str, expect: str) -> None:
    """Replace the job field's JSON editor text, as a user pasting would (it opens with the field's value).

    The UI may render the editor again just after the switch to JSON input (CI saw a stale textarea on a
    loaded machine): the editor is then found again and typed into from the start, until it holds `expect`.
    """
    deadline = time.monotonic() + 20
    while True:
        try:
            editor = browser.execute_script(_PROPERTY, "job").find_element(By.CSS_SELECTOR, "textarea")
            editor.send_keys(Keys.CONTROL, "a")
            editor.send_keys(Keys.DELETE)
            editor.send_keys(text)
            if expect in (editor.get_attribute("value") or ""):
                return
        except StaleElementReferenceException:
            pass
        assert time.monotonic() < deadline, "the job field's JSON editor never held the pasted job"
        time.sleep(0.25)


def _wait_for_run_of_job(
    stack: PrefectStack, deployment_id: UUID, job_id: str, browser: webdriver.Chrome
) -> FlowRun:
    deadline = time.monotonic() + 30
    while True:
        for run in _runs_of(stack, deployment_id):
            if (run.parameters.get("job") or {}).get("job_id") == job_id:
                return run
        text = browser.execute_script("return document.body.innerText")
        assert time.monotonic() < deadline, f"the form made no run of job {job_id}; the page:\n{text[-1500:]}"
        time.sleep(0.25)


def test_the_server_logged_no_errors(prefect_stack: PrefectStack) -> None:
    """Last: whatever ran above, the server itself did not fail (e.g. its scheduler, its database)."""
    assert prefect_stack.server_errors() == [], prefect_stack.server.log_tail(200)
