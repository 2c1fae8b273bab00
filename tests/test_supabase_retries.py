"""Who retries a small Supabase request, counted at the gateway during a Storage outage: inside a clip attempt
the clip task does (once per attempt), anywhere else the store does (a few tries in place), never both."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from clipgen.backends import register_provider
from clipgen.errors import StoreFailed
from clipgen.settings import Settings
from clipgen.stores.base import VIDEO_BUCKET
from clipgen.stores.supabase import SupabaseStore
from commands.cli import main
from tests.conftest import SupabaseStack
from tests.doubles import ScriptedProvider

pytestmark = pytest.mark.usefixtures("prefect_server", "supabase_env")


@pytest.fixture
def store(supabase_env: SupabaseStack) -> Iterator[SupabaseStore]:
    opened = SupabaseStore.from_settings(Settings())
    yield opened
    opened.close()


def signs_of(stack: SupabaseStack, path: str, earlier: int) -> list[int]:
    """The status of each sign request for `path` the gateway saw after the first `earlier` requests."""
    requests = stack.storage.requests[earlier:]
    return [r.status for r in requests if r.operation == "sign" and r.path.endswith(path)]


def test_inside_a_clip_attempt_a_small_request_is_retried_by_the_task_only(
    supabase_env: SupabaseStack, example_job: Path, tmp_path: Path
) -> None:
    """Signing the stored clip's link fails through an outage: 3 signs in all, one per attempt of the clip
    task. Before, the store tried it 3 times in place in each of the task's 3 attempts: 9."""
    job = json.loads(example_job.read_text())
    job["job_id"] = str(uuid.uuid4())  # a job of its own: nothing stored to reuse
    example_job.write_text(json.dumps(job))
    register_provider("scripted-supabase-retries", lambda settings: ScriptedProvider())
    storage = supabase_env.storage
    earlier = len(storage.requests)
    storage.fail_next(9, status=503, bucket=VIDEO_BUCKET, operation="sign")
    output = tmp_path / "clips.json"
    # One clip at a time: the first clip's signs meet the outage first.
    flags = ["--store", "supabase", "--provider", "scripted-supabase-retries", "--concurrency", "1"]
    main(["run", str(example_job), *flags, "--output", str(output)])

    assert signs_of(supabase_env, f"{job['job_id']}/clip_0.mp4", earlier) == [503] * 3
    [clip] = [clip for clip in json.loads(output.read_text())["clips"] if clip["clip_index"] == 0]
    assert clip["status"] == "failed" and "Supabase Storage 503" in clip["error"]


def test_outside_a_clip_task_the_store_retries_a_small_request_in_place(
    store: SupabaseStore, supabase_env: SupabaseStack, tmp_path: Path
) -> None:
    """Serve, the CLI or the flow itself sign links with nothing above to retry them: the store's 3 tries."""
    source, path = tmp_path / "clip.mp4", f"{uuid.uuid4()}/clip_0.mp4"
    source.write_bytes(b"a clip")
    store.put_object(VIDEO_BUCKET, path, source, "video/mp4")
    storage = supabase_env.storage
    earlier = len(storage.requests)

    storage.fail_next(2, status=503, bucket=VIDEO_BUCKET, operation="sign")
    assert store.signed_url(VIDEO_BUCKET, path)
    assert signs_of(supabase_env, path, earlier) == [503, 503, 200]

    storage.fail_next(3, status=503, bucket=VIDEO_BUCKET, operation="sign")
    with pytest.raises(StoreFailed, match="Supabase Storage 503"):
        store.signed_url(VIDEO_BUCKET, path)
    assert signs_of(supabase_env, path, earlier) == [503, 503, 200, 503, 503, 503]
