"""The baselines: the flow's own predictions sent straight to the fake over HTTP, without Prefect, the
pipeline or the store. Each one is created, polled until it ends and its output downloaded to disk, as a
short script would do it: one at a time (`run_sequential`), or five at a time under a bare
`asyncio.Semaphore` (`run_semaphore`). They poll at the flow's interval, so the difference from the flow is
what the flow does beyond that.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import POLL_INTERVAL_S, TOKEN
from clipgen.job import ClipPrompts, GenerationOptions
from clipgen.model_inputs import ModelRequest, build_request
from clipgen.planning import Resolver, plan_job
from clipgen.references import ReferencePolicy, resolve_reference

TERMINAL = frozenset({"succeeded", "failed", "canceled", "aborted"})
CHUNK = 1 << 20
TIMEOUT = httpx.Timeout(60.0, connect=10.0)


def prediction_requests(
    job: ClipPrompts,
    generation: GenerationOptions,
    image_input: str | None = None,
    cache_dir: Path | None = None,
) -> list[ModelRequest]:
    """The requests the flow would create for `job`, built by the same code. A job with a scene image
    needs `cache_dir` (its reference is fetched, as the flow does) and sends `image_input` for it: an image
    the fake already has, where the flow's provider uploads its own cropped copy first."""
    resolve: Resolver = _no_references
    if cache_dir is not None:
        policy = ReferencePolicy(allow_loopback=True)  # the scene is on the fake, on loopback
        resolve = functools.partial(resolve_reference, cache_dir=cache_dir, policy=policy)
    plan = plan_job(job, generation, resolve)

    def send_image(path: str, aspect_ratio: str, size: tuple[int, int]) -> str:
        if image_input is None:
            raise AssertionError("this job has a scene image: give the image to send")
        return image_input

    return [build_request(clip, send_image) for clip in plan.clips]


def _no_references(reference: str, field: str) -> Path:
    raise AssertionError(f"{field} names {reference!r}: give a cache_dir to fetch it")


def _create_call(request: ModelRequest) -> tuple[str, dict[str, Any]]:
    """Official models are created by name, community models by their pinned version (as the provider)."""
    if request.version:
        return "/v1/predictions", {"version": request.version, "input": request.input}
    return f"/v1/models/{request.model}/predictions", {"input": request.input}


def _headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def _output_url(prediction: dict[str, Any]) -> str:
    if prediction["status"] != "succeeded":
        raise RuntimeError(f"baseline prediction {prediction['id']} {prediction['status']}")
    output = prediction["output"]
    return str(output[0] if isinstance(output, list) else output)


# --- one at a time --------------------------------------------------------------------------------------


def run_sequential(base_url: str, requests: Sequence[ModelRequest], work_dir: Path) -> float:
    """Seconds to create, wait for and download every request, one after another."""
    work_dir.mkdir(parents=True, exist_ok=True)
    with httpx.Client(base_url=base_url, headers=_headers(), timeout=TIMEOUT) as client:
        began = time.monotonic()
        for index, request in enumerate(requests):
            _generate(client, request, work_dir / f"clip_{index}.mp4")
        return time.monotonic() - began


def fetch_output(base_url: str, request: ModelRequest, dest: Path) -> Path:
    """One prediction's output on disk (the fake's real rendering, e.g. for the thumbnail benchmark)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with httpx.Client(base_url=base_url, headers=_headers(), timeout=TIMEOUT) as client:
        _generate(client, request, dest)
    return dest


def _generate(client: httpx.Client, request: ModelRequest, dest: Path) -> None:
    path, body = _create_call(request)
    created = client.post(path, json=body)
    created.raise_for_status()
    prediction: dict[str, Any] = created.json()
    while prediction["status"] not in TERMINAL:
        time.sleep(POLL_INTERVAL_S)
        polled = client.get(f"/v1/predictions/{prediction['id']}")
        polled.raise_for_status()
        prediction = polled.json()
    with client.stream("GET", _output_url(prediction)) as response, open(dest, "wb") as handle:
        response.raise_for_status()
        for chunk in response.iter_bytes(CHUNK):
            handle.write(chunk)


# --- a bare asyncio.Semaphore ---------------------------------------------------------------------------


def run_semaphore(
    base_url: str,
    requests: Sequence[ModelRequest],
    work_dir: Path,
    slots: int,
    poll_interval_s: float = POLL_INTERVAL_S,
) -> float:
    """Seconds to create, wait for and download every request, at most `slots` at a time, each prediction
    polled every `poll_interval_s`. A slot is held from the create to the end of the download."""
    work_dir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_run_semaphore(base_url, requests, work_dir, slots, poll_interval_s))


async def _run_semaphore(
    base_url: str, requests: Sequence[ModelRequest], work_dir: Path, slots: int, poll_interval_s: float
) -> float:
    limits = httpx.Limits(max_connections=slots * 2)
    async with httpx.AsyncClient(
        base_url=base_url, headers=_headers(), timeout=TIMEOUT, limits=limits
    ) as client:
        semaphore = asyncio.Semaphore(slots)
        began = time.monotonic()
        await asyncio.gather(
            *(
                _generate_async(client, semaphore, request, work_dir / f"clip_{index}.mp4", poll_interval_s)
                for index, request in enumerate(requests)
            )
        )
        return time.monotonic() - began


async def _generate_async(
    client: httpx.AsyncClient,
    semaphore: asyncio.Semaphore,
    request: ModelRequest,
    dest: Path,
    poll_interval_s: float,
) -> None:
    async with semaphore:
        path, body = _create_call(request)
        created = await client.post(path, json=body)
        created.raise_for_status()
        prediction: dict[str, Any] = created.json()
        while prediction["status"] not in TERMINAL:
            await asyncio.sleep(poll_interval_s)
            polled = await client.get(f"/v1/predictions/{prediction['id']}")
            polled.raise_for_status()
            prediction = polled.json()
        async with client.stream("GET", _output_url(prediction)) as response:
            response.raise_for_status()
            # Written with blocking calls: a bare script would, and the files are a few MB at most.
            with open(dest, "wb") as handle:
                async for chunk in response.aiter_bytes(CHUNK):
                    handle.write(chunk)
