"""Reference images travel as stored objects, not as bytes in flow-run parameters.

Realistic photos (2-5 MB JPEG and PNG of random pixels, so they do not compress) go through `video-generator
run` and through `submit` plus the queue flow, on the local store and on Supabase (real PostgreSQL,
PostgREST and Storage). What Prefect's API returns as the flow run's parameters, and the queue row,
stay a few KB: Prefect refuses parameters over 512 KB, which a single inlined phone photo passes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

from clipgen.backends import close_quietly, register_provider
from clipgen.errors import ValidationError
from clipgen.job import ClipPrompts
from clipgen.references import MAX_IMAGE_BYTES, ReferencePolicy, reference_resolver, resolve_reference
from clipgen.settings import Settings
from clipgen.stores.base import REFERENCE_BUCKET, ClipStore
from clipgen.stores.local import LocalStore
from clipgen.stores.supabase import SupabaseStore
from commands.cli import main
from flows.job_queue import process_job_queue
from tests.conftest import SupabaseStack, write_job
from tests.doubles import ScriptedProvider
from tests.photos import MB, Photo, make_photo

pytestmark = pytest.mark.usefixtures("prefect_server")

SMALL_PARAMETERS = 64 * 1024
"""What a 20-clip job with a 5 MB image per clip may take in the flow run's parameters and the queue row."""


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Photo]:
    """20 distinct photos of 2-5 MB, JPEG and PNG in turn, made once for the session."""
    directory = tmp_path_factory.mktemp("photos")
    made = []
    for i in range(20):
        image_format = "JPEG" if i % 2 == 0 else "PNG"
        ext = "jpg" if image_format == "JPEG" else "png"
        made.append(make_photo(directory / f"photo_{i}.{ext}", image_format, 2.5 + (i % 4) * 0.8))
    sizes = [photo.path.stat().st_size for photo in made]
    assert min(sizes) >= 2 * MB and max(sizes) <= 5.5 * MB, sizes
    return made


def job_with_photos(directory: Path, scenes: list[Photo], **extra: Any) -> tuple[UUID, Path]:
    """A job file naming each photo by its path, one clip each (veo-3.1 renders any of them at 16:9). The
    photos are linked beside it: the CLI reads only files in the job file's folder and below."""
    job_id = uuid4()
    for photo in scenes:
        beside = directory / photo.path.name
        if not beside.exists():
            os.link(photo.path, beside)  # a hard link: the same file, in the folder, without copying it
    prompts = [
        {"clip_index": i, "prompt": f"clip {i}", "duration": 4.0, "scene_reference_url": photo.path.name}
        | extra
        for i, photo in enumerate(scenes)
    ]
    path = write_job(directory / f"{job_id}.json", {"job_id": str(job_id), "clip_prompts": prompts})
    return job_id, path


def flow_run_parameters(job_id: UUID) -> list[dict[str, Any]]:
    """The parameters of the job's flow runs, as the Prefect API returns them."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"video-clips-{job_id}"]))
        )
    assert runs, f"no flow run of job {job_id}"
    return [run.parameters for run in runs]


def assert_small(parameters: dict[str, Any], photos: list[Photo]) -> None:
    size = len(json.dumps(parameters))
    assert size < SMALL_PARAMETERS, size
    scenes = [prompt["scene_reference_url"] for prompt in parameters["job"]["clip_prompts"]]
    assert scenes == [photo.reference for photo in photos]


def open_store(name: str) -> LocalStore | SupabaseStore:
    return LocalStore(Settings().data_dir) if name == "local" else SupabaseStore.from_settings(Settings())


@pytest.fixture(params=["local", "supabase"])
def store_name(request: pytest.FixtureRequest) -> str:
    if request.param == "supabase":
        request.getfixturevalue("supabase_env")
    return str(request.param)


def stored_references(store_name: str, stack: SupabaseStack | None = None) -> dict[str, int]:
    """Every object of the references bucket, with its size."""
    if stack is not None:
        return {
            path: obj.size
            for (bucket, path), obj in stack.storage.objects.items()
            if bucket == REFERENCE_BUCKET
        }
    root = Settings().data_dir / "storage" / REFERENCE_BUCKET
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


# --- run -------------------------------------------------------------------------------------------------


def test_a_20_clip_job_with_a_5_mb_photo_per_clip_runs_with_small_parameters(
    photos: list[Photo], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id, path = job_with_photos(tmp_path, photos)
    assert sum(photo.path.stat().st_size for photo in photos) > 60 * MB  # no cap on a job's total

    # Small clips (the images were resolved by planning; the local renderer's use of them is shown below).
    register_provider("scripted", lambda settings: ScriptedProvider())
    assert (
        main(["run", str(path), "--model", "veo-3.1", "--provider", "scripted", "--concurrency", "10"]) == 0
    )

    assert "Completed: 20/20 clips" in capsys.readouterr().out
    [parameters] = flow_run_parameters(job_id)
    assert_small(parameters, photos)
    assert stored_references("local") == {photo.object_path: photo.path.stat().st_size for photo in photos}


def test_run_on_supabase_stores_each_photo_once_across_clips_and_runs(
    photos: list[Photo], supabase_env: SupabaseStack, tmp_path: Path
) -> None:
    scenes = [photos[0], photos[1], photos[0], photos[3]]  # the first photo in two clips
    job_id, path = job_with_photos(tmp_path, scenes)
    for _ in range(2):  # the second run reuses the clips and the photos
        assert main(["run", str(path), "--model", "veo-3.1", "--store", "supabase"]) == 0

    for parameters in flow_run_parameters(job_id):
        assert_small(parameters, scenes)
    storage = supabase_env.storage
    for photo in (photos[0], photos[1], photos[3]):
        stored = storage.object(REFERENCE_BUCKET, photo.object_path)
        assert stored.etag == hashlib.md5(photo.data).hexdigest()  # Storage's eTag: the stored bytes' MD5
        assert stored.content_type == ("image/jpeg" if photo.format == "JPEG" else "image/png")
        assert storage.writes(REFERENCE_BUCKET, photo.object_path) == 1
    assert not storage.buckets[REFERENCE_BUCKET].public


# --- submit and the queue ----------------------------------------------------------------------------------


def test_submitted_photos_reach_a_worker_with_a_cold_cache_through_the_store(
    store_name: str, photos: list[Photo], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if store_name == "supabase":  # the queue table is the session's: only this test's job in it
        request.getfixturevalue("supabase_db").postgres.psql("delete from public.video_jobs")
    scenes = [photos[4], photos[5], photos[4]]
    job_id, path = job_with_photos(tmp_path, scenes)
    assert main(["submit", str(path), "--model", "veo-3.1", "--store", store_name]) == 0
    store = open_store(store_name)
    row = store.queued_job(job_id)
    assert row is not None and len(json.dumps(row.job)) < SMALL_PARAMETERS
    # The worker is another machine: nothing of the submit's cache is there.
    shutil.rmtree(Settings().reference_cache_dir)

    state = process_job_queue(provider="local", store=store_name, return_state=True)

    assert state.message == "1 job: 1 succeeded", state
    [parameters] = flow_run_parameters(job_id)
    assert_small(parameters, scenes)
    cached = sorted(p.name for p in Settings().reference_cache_dir.iterdir())
    assert cached == sorted(f"sha256-{hashlib.sha256(p.data).hexdigest()}" for p in (photos[4], photos[5]))
    if store_name == "supabase":
        stack = request.getfixturevalue("supabase_env")
        wanted = (photos[4].object_path, photos[5].object_path)
        reads = [r for r in stack.storage.requests if r.operation == "download" and r.path.endswith(wanted)]
        # GET /object/clip-references/<path> with the service key, each photo once though two clips use one.
        assert [(r.method, r.bucket, r.role, r.status) for r in reads] == [
            ("GET", REFERENCE_BUCKET, "service_role", 200)
        ] * 2
    close_quietly(store)


# --- refusals ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["run", "submit"])
def test_a_data_uri_over_the_cap_is_refused_naming_the_field(
    command: str, photos: list[Photo], tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, path = job_with_photos(tmp_path, photos[:4])
    job = json.loads(path.read_text())
    oversized = "data:image/png;base64," + "A" * (MAX_IMAGE_BYTES * 4 // 3 + 8)
    job["clip_prompts"][3]["character_reference_urls"] = [oversized]
    write_job(path, job)

    assert main([command, str(path), "--model", "veo-3.1"]) == 2

    err = capsys.readouterr().err
    assert "clip_prompts[3].character_reference_urls[0]: data URI is larger than 20 MB" in err
    assert "Traceback" not in err and len(err) < 2000
    assert not (data_dir / "storage").exists()  # the good photos were not uploaded either


BAD_STORE_REFERENCES = {
    "another bucket": "store://video-clips/sha256/" + "a" * 64 + ".jpg",
    "a clip's path": f"store://{REFERENCE_BUCKET}/{uuid4()}/clip_0.mp4",
    "uppercase hex": f"store://{REFERENCE_BUCKET}/sha256/" + "A" * 64 + ".jpg",
    "a short hash": f"store://{REFERENCE_BUCKET}/sha256/abc.jpg",
    "a path that climbs": f"store://{REFERENCE_BUCKET}/sha256/../../video-clips/x.mp4",
    "no extension": f"store://{REFERENCE_BUCKET}/sha256/" + "a" * 64,
}


@pytest.mark.parametrize("case", sorted(BAD_STORE_REFERENCES))
def test_a_store_reference_outside_the_references_pattern_is_refused_naming_the_field(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = BAD_STORE_REFERENCES[case]
    field = "clip_prompts[1].object_reference_urls[0]"
    # Straight to the resolver (a worker's planning) ...
    with pytest.raises(ValidationError) as refused:
        resolve_reference(ref, field, tmp_path / "cache", ReferencePolicy(), lambda: pytest.fail("no store"))
    assert str(refused.value).startswith(f"{field}: ")
    # ... and from a job file, as the UI, the API and the queue would send it: the job model refuses it.
    prompts = [{"clip_index": i, "prompt": "p", "duration": 4.0} for i in range(2)]
    prompts[1]["object_reference_urls"] = [ref]
    path = write_job(tmp_path / "job.json", {"job_id": str(uuid4()), "clip_prompts": prompts})
    assert main(["run", str(path), "--model", "veo-3.1"]) == 2
    err = capsys.readouterr().err
    assert f"{field}: " in err and "Traceback" not in err


def test_a_queued_store_reference_to_another_bucket_fails_the_job_naming_the_field(data_dir: Path) -> None:
    job_id = uuid4()
    ref = "store://video-clips/sha256/" + "b" * 64 + ".png"
    job = {
        "job_id": str(job_id),
        "clip_prompts": [{"clip_index": 0, "prompt": "p", "duration": 4.0, "scene_reference_url": ref}],
    }
    LocalStore(data_dir).enqueue_job(job_id, job, {"model": "veo-3.1"})

    state = process_job_queue(provider="local", store="local", return_state=True)

    assert state.message == "1 job: 1 failed"
    row = LocalStore(data_dir).queued_job(job_id)
    assert row is not None and row.last_error is not None
    assert "job.clip_prompts[0].scene_reference_url" in row.last_error and REFERENCE_BUCKET in row.last_error


def test_a_stored_object_whose_bytes_do_not_match_its_name_is_refused(
    store_name: str, photos: list[Photo], tmp_path: Path
) -> None:
    # Someone with access to the bucket replaced an image: the name says one sha256, the bytes have another.
    store = open_store(store_name)
    named, actual = photos[6], photos[8]
    store.put_object(REFERENCE_BUCKET, named.object_path, actual.path, "image/jpeg")
    field = "clip_prompts[0].scene_reference_url"

    with pytest.raises(ValidationError) as refused:
        resolve_reference(named.reference, field, tmp_path / "cold-cache", ReferencePolicy(), lambda: store)

    altered = f"the stored object {named.object_path} does not have the sha256 its name says: it was altered"
    assert str(refused.value) == f"{field}: {altered}"
    assert not list((tmp_path / "cold-cache").glob("sha256-*"))
    close_quietly(store)


def test_a_missing_object_is_refused_naming_the_field(
    store_name: str, photos: list[Photo], tmp_path: Path
) -> None:
    store = open_store(store_name)
    ref = f"store://{REFERENCE_BUCKET}/sha256/{uuid4().hex * 2}.png"
    with pytest.raises(
        ValidationError, match=r"^f: store://clip-references/sha256/\w+\.png is not in the store"
    ):
        resolve_reference(ref, "f", tmp_path / "cache", ReferencePolicy(), lambda: store)
    close_quietly(store)


def test_a_cached_image_needs_no_store(photos: list[Photo], tmp_path: Path) -> None:
    """The cache's key is the sha256 the reference names: a hit is proof enough, and no store is opened."""
    store = LocalStore(tmp_path / "data")
    store.put_object(REFERENCE_BUCKET, photos[2].object_path, photos[2].path, "image/jpeg")
    opened: list[ClipStore] = []

    def opener() -> ClipStore:
        opened.append(store)
        return store

    first = resolve_reference(photos[2].reference, "f", tmp_path / "cache", ReferencePolicy(), opener)
    again = resolve_reference(photos[2].reference, "f", tmp_path / "cache", ReferencePolicy(), opener)
    assert first == again and first.read_bytes() == photos[2].data
    assert len(opened) == 1


class CountingStore(LocalStore):
    """The real local store, counting how often it is opened and closed."""

    opened = 0
    closed = 0

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        type(self).opened += 1

    def close(self) -> None:
        type(self).closed += 1


def test_planning_opens_the_store_once_and_only_for_an_image_it_has_not_cached(
    photos: list[Photo], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    for photo in photos[9:12]:
        LocalStore(data).put_object(REFERENCE_BUCKET, photo.object_path, photo.path, "image/png")
    cache = tmp_path / "cache"
    CountingStore.opened = CountingStore.closed = 0

    with reference_resolver(cache, lambda: CountingStore(data)) as resolve:
        resolve(photos[9].reference, "f")
    assert (CountingStore.opened, CountingStore.closed) == (1, 1)  # nothing cached yet

    with reference_resolver(cache, lambda: CountingStore(data)) as resolve:
        resolve(photos[9].reference, "f")
    assert (CountingStore.opened, CountingStore.closed) == (1, 1)  # a cache hit: the store is not opened

    with reference_resolver(cache, lambda: CountingStore(data)) as resolve:
        for photo in photos[9:12]:
            assert resolve(photo.reference, "f").read_bytes() == photo.data
    assert (CountingStore.opened, CountingStore.closed) == (2, 2)  # one store for the job's two misses


def test_a_public_references_bucket_is_refused(
    supabase_env: SupabaseStack, photos: list[Photo], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    supabase_env.storage.reset()
    admin = SupabaseStore.from_settings(Settings())
    admin._client.storage.create_bucket(REFERENCE_BUCKET, options={"public": True})
    admin.close()
    _, path = job_with_photos(tmp_path, photos[:1])
    try:
        assert main(["submit", str(path), "--model", "veo-3.1", "--store", "supabase"]) == 6
        err = " ".join(capsys.readouterr().err.split())  # the paragraph is wrapped
        assert f"bucket {REFERENCE_BUCKET} is public" in err and "(exit code 6" in err
        assert f"make {REFERENCE_BUCKET} private" in err and "service role key" not in err
        assert not [key for key in supabase_env.storage.objects if key[0] == REFERENCE_BUCKET]
    finally:
        supabase_env.storage.reset()


def test_the_run_form_explains_the_references() -> None:
    """The Prefect UI shows these descriptions beside the fields of the on-demand deployment's form."""
    schema = ClipPrompts.model_json_schema()["$defs"]["ClipPrompt"]["properties"]
    for field in ("scene_reference_url", "character_reference_urls", "object_reference_urls"):
        description = schema[field]["description"]
        assert "http(s) URL" in description and "data: URI" in description
        assert f"store://{REFERENCE_BUCKET}/sha256/<hex>.<ext>" in description
