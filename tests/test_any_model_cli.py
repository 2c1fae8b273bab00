"""`video-generator run|submit --model owner/name`, as a user runs it (a process of its own) against the fake
Replicate as a real server: a model the catalog has never seen, served from a schema written here, runs to
clips of the asked shape; its schema is kept with the job, so a rerun and the queue's worker (no token) plan
without reading it again; a local preview of it is free; an unknown model, a missing token and a budget
without a price are refused (exit 2) naming the option."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any
from uuid import UUID, uuid4

import pytest

from clipgen.media import matches_aspect, probe
from clipgen.model_lookup import schema_object_path
from clipgen.stores.base import REFERENCE_BUCKET
from clipgen.stores.local import LocalStore
from staging.fake_replicate.server import FakeReplicateServer
from tests.cli_process import run_cli

TOKEN = "any-model-token"
MODEL = "someone/new-video-model"
NEW_MODEL: dict[str, Any] = {
    "model": MODEL,
    "version": None,
    "required": ["prompt", "seconds"],
    "properties": {
        "prompt": {"type": "string", "maxLength": 1000},
        "start_image": {"type": "string", "format": "uri", "nullable": True},
        "seconds": {"type": "integer", "enum": [4, 8], "default": 4},
        "aspect_ratio": {"type": "string", "enum": ["16:9", "9:16"], "default": "16:9"},
    },
}
TARGETS = (4.0, 6.0, 3.0)
ASKED = [4, 8, 4]  # per clip: the smallest duration the model offers at or above the target
UNKNOWN_PRICE = f"estimate unknown (no published price for {MODEL})"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeReplicateServer]:
    with FakeReplicateServer(token=TOKEN, latency_s=0.05) as server:
        yield server


@pytest.fixture
def new_model(fake: FakeReplicateServer) -> Iterator[None]:
    """The fake serves the new model (as Replicate would once someone publishes it) for this test."""
    fake.add_schema(NEW_MODEL)
    yield
    fake.restore_schemas()


@pytest.fixture
def job(tmp_path: Path) -> Path:
    tag = uuid4().hex[:8]  # finds this test's predictions among the module's
    clips = [{"clip_index": i, "prompt": f"{tag} shot {i}", "duration": d} for i, d in enumerate(TARGETS)]
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"job_id": str(uuid4()), "clip_prompts": clips}))
    return path


def cli(fake: FakeReplicateServer, tmp_path: Path, *args: str, token: bool = True) -> CompletedProcess[str]:
    from prefect.settings import PREFECT_API_URL

    env = {"REPLICATE_BASE_URL": fake.base_url}
    if PREFECT_API_URL.value():  # the session's server (prefect_server); refusals start no flow
        env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
    if token:
        env |= {"REPLICATE_API_TOKEN": TOKEN, "REPLICATE_POLL_INTERVAL": "0.05"}
    return run_cli(*args, home=tmp_path / "home", data_dir=tmp_path / "data", env=env)


def job_id(job: Path) -> UUID:
    return UUID(json.loads(job.read_text())["job_id"])


def made_for(fake: FakeReplicateServer, job: Path) -> list[dict[str, Any]]:
    tag = json.loads(job.read_text())["clip_prompts"][0]["prompt"].split()[0]
    return [p for p in fake.predictions if tag in p["input"].get("prompt", "")]


@pytest.mark.usefixtures("prefect_server", "new_model")
def test_a_model_the_catalog_has_never_seen_runs_and_a_rerun_reads_no_schema(
    fake: FakeReplicateServer, job: Path, tmp_path: Path
) -> None:
    output = tmp_path / "clips.json"
    args = ("run", str(job), "--model", MODEL, "--provider", "replicate", "--aspect-ratio", "9:16")
    done = cli(fake, tmp_path, *args, "--output", str(output))

    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{MODEL} 9:16 · provider replicate · store local · {UNKNOWN_PRICE}" in done.stdout
    # Nothing claims the clips were free: with no known price the summary says so instead of $0.00.
    assert "paid an unknown amount" in done.stdout and "$0.00" not in done.stdout
    made = sorted(made_for(fake, job), key=lambda p: p["input"]["prompt"])
    assert [(p["model"], p["input"]["seconds"], p["input"]["aspect_ratio"]) for p in made] == [
        (MODEL, seconds, "9:16") for seconds in ASKED
    ]
    result = json.loads(output.read_text())
    assert result["successful_clips"] == 3
    for clip in result["clips"]:
        info = probe(Path(clip["video_url"].removeprefix("file://")))
        assert matches_aspect(info.width, info.height, "9:16", 0.02), (info.width, info.height)
        assert info.duration >= clip["original_target_duration"] - 2.0
        assert clip["metadata"]["replicate_model"] == MODEL
    store = LocalStore(tmp_path / "data")
    assert store.has_object(REFERENCE_BUCKET, schema_object_path(job_id(job), MODEL))

    # Replicate no longer serves the model: a rerun that read its schema again would be refused.
    fake.restore_schemas()
    creates = fake.creates
    again = cli(fake, tmp_path, *args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Completed: 3/3 clips · all reused from earlier runs, none generated now" in again.stdout
    assert fake.creates == creates


@pytest.mark.usefixtures("prefect_server", "new_model")
def test_a_local_preview_of_an_owner_name_model_is_free_and_in_its_shape(
    fake: FakeReplicateServer, job: Path, tmp_path: Path
) -> None:
    output = tmp_path / "clips.json"
    done = cli(
        fake, tmp_path, "run", str(job), "--model", MODEL, "--provider", "local", "--output", str(output)
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert f"provider local · store local · free local preview; on Replicate: {UNKNOWN_PRICE}" in done.stdout
    assert not made_for(fake, job)
    result = json.loads(output.read_text())
    assert [clip["metadata"]["preview"] for clip in result["clips"]] == [True] * 3
    # The preview renders what the model would be asked for: its 16:9 shape and its 4/8 s durations.
    assert [clip["target_duration"] for clip in result["clips"]] == ASKED
    for clip in result["clips"]:
        info = probe(Path(clip["video_url"].removeprefix("file://")))
        assert matches_aspect(info.width, info.height, "16:9", 0.02)


@pytest.mark.usefixtures("prefect_server", "new_model")
def test_a_submitted_owner_name_job_runs_on_a_worker_without_a_token(
    fake: FakeReplicateServer, job: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The queue row keeps options.model = owner/name; the worker plans with the schema `submit` kept."""
    from flows.job_queue import process_job_queue

    queued = cli(fake, tmp_path, "submit", str(job), "--model", MODEL, "--price-per-second", "0.05")
    assert queued.returncode == 0, queued.stdout + queued.stderr
    # Priced: 16 s asked at $0.05/s.
    assert f"queued job {job_id(job)}: 3 clips · {MODEL} 16:9 · " in queued.stdout
    assert "estimate on Replicate $0.80" in queued.stdout
    store = LocalStore(tmp_path / "data")
    row = store.queued_job(job_id(job))
    assert row is not None and row.options is not None
    assert (row.options["model"], row.options["price_per_second_usd"]) == (MODEL, 0.05)

    monkeypatch.setenv("VIDEO_GENERATOR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("REPLICATE_API_TOKEN", raising=False)
    state = process_job_queue(provider="local", store="local", return_state=True)
    assert state.is_completed() and state.message == "1 job: 1 succeeded", state.message
    assert [r.status for r in store.clip_records(job_id(job))] == ["success"] * 3


@pytest.mark.usefixtures("new_model")
def test_a_budget_on_a_model_with_no_price_needs_a_price_per_second(
    fake: FakeReplicateServer, job: Path, tmp_path: Path
) -> None:
    refused = cli(fake, tmp_path, "submit", str(job), "--model", MODEL, "--budget", "5")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"options.budget_usd: {MODEL} has no known price" in refused.stderr
    assert "options.price_per_second_usd" in refused.stderr and "Traceback" not in refused.stderr

    over = cli(
        fake, tmp_path, "submit", str(job), "--model", MODEL, "--budget", "0.5", "--price-per-second", "0.05"
    )
    assert over.returncode == 2
    assert "options.budget_usd: the estimate $0.80 exceeds the budget $0.50" in over.stderr

    priced = cli(
        fake, tmp_path, "submit", str(job), "--model", MODEL, "--budget", "5", "--price-per-second", "0.05"
    )
    assert priced.returncode == 0, priced.stdout + priced.stderr
    assert "estimate on Replicate $0.80" in priced.stdout


def test_a_model_replicate_does_not_know_exits_2_naming_the_option(
    fake: FakeReplicateServer, job: Path, tmp_path: Path
) -> None:
    done = cli(fake, tmp_path, "run", str(job), "--model", "someone/no-such-model", "--provider", "local")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "options.model: Replicate has no model someone/no-such-model" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "data" / "work").exists()


def test_without_a_token_the_refusal_says_what_to_set(
    fake: FakeReplicateServer, job: Path, tmp_path: Path
) -> None:
    done = cli(fake, tmp_path, "run", str(job), "--model", MODEL, "--provider", "local", token=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"options.model: {MODEL} is not in the catalog" in done.stderr
    assert "set REPLICATE_API_TOKEN" in done.stderr


def test_a_token_replicate_refuses_exits_2_naming_the_option(
    fake: FakeReplicateServer, job: Path, tmp_path: Path
) -> None:
    env = {"REPLICATE_API_TOKEN": "not-the-token", "REPLICATE_BASE_URL": fake.base_url}
    done = run_cli(
        "run", str(job), "--model", MODEL, home=tmp_path / "home", data_dir=tmp_path / "data", env=env
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"options.model: {MODEL}'s input schema could not be read from Replicate: Replicate API 401" in (
        done.stderr
    )
    assert "Traceback" not in done.stderr


def test_the_help_says_model_takes_owner_name(fake: FakeReplicateServer, tmp_path: Path) -> None:
    done = cli(fake, tmp_path, "run", "--help")
    assert "--model KEY|OWNER/NAME" in done.stdout and "--price-per-second USD" in done.stdout
