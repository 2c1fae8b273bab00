"""Peak memory (RSS) of the flow's process, for jobs of different sizes, each in a fresh process.

A fresh process per size, so each peak is its own (the kernel keeps one high-water mark per process). The
child runs only the flow: the fake Replicate API and the Prefect server are the parent's (given by URL),
so their memory is not counted. Run by `measure_rss`; by hand:

    .venv/bin/python -m benchmarks.memory --clips 5 [--scene URL]

with the settings in its environment: REPLICATE_BASE_URL and REPLICATE_API_TOKEN of a running fake,
VIDEO_GENERATOR_DATA_DIR, and PREFECT_API_URL. It prints one JSON line: the peak, and the RSS after imports.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.common import ENVIRONMENT, check_delivered, make_job, new_tag, options, run_flow
from benchmarks.report import REPO, Figure, figure

if TYPE_CHECKING:  # the child runs no fake: importing its server would count in the child's peak
    from staging.fake_replicate.server import FakeReplicateServer

CHILD_TIMEOUT_S = 600.0


def peak_rss_mb() -> float:
    """This process's high-water mark of resident memory.

    VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over from the parent through fork and exec,
    so a child of a 300 MB parent reports at least 300 MB however little it uses. VmHWM belongs to the
    process's own address space. ru_maxrss (bytes on macOS) only where there is no /proc.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024**2 if sys.platform == "darwin" else peak / 1024


def child(clips: int, scene: str | None) -> dict[str, Any]:
    """In the fresh process: import, run one job of `clips` 10 s 1080p clips, report the peaks."""
    import flows.video_generator  # noqa: F401 - what every run imports, counted before the job

    after_import = peak_rss_mb()
    run = run_flow(make_job(new_tag(), clips, scene=scene), options())
    check_delivered(run, clips)
    return {
        "clips": clips,
        "peak_rss_mb": peak_rss_mb(),
        "after_import_mb": after_import,
        "seconds": run.seconds,
    }


def measure_one(
    fake: FakeReplicateServer, prefect_api_url: str, clips: int, data_dir: Path, scene: str
) -> dict[str, Any]:
    env = {
        **os.environ,
        **ENVIRONMENT,
        "REPLICATE_BASE_URL": fake.base_url,
        "VIDEO_GENERATOR_DATA_DIR": str(data_dir),
        "PREFECT_API_URL": prefect_api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "CRITICAL",
    }
    command = [sys.executable, "-m", "benchmarks.memory", "--clips", str(clips), "--scene", scene]
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"the memory run of {clips} clips failed ({done.returncode}):\n{done.stderr[-3000:]}"
        )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def measure_rss(
    fake: FakeReplicateServer,
    prefect_api_url: str,
    root: Path,
    sizes: Sequence[int],
    repeat: int,
    scene: str,
) -> list[Figure]:
    samples: dict[int, list[dict[str, Any]]] = {size: [] for size in sizes}
    for round_number in range(repeat):
        for size in sizes:
            data_dir = root / f"rss-{size}-{round_number}"
            samples[size].append(measure_one(fake, prefect_api_url, size, data_dir, scene))
    figures = [
        figure(
            f"peak_rss_{size}_clips_mb",
            f"Peak RSS, {size} clips of 10 s 1080p",
            "MB",
            [s["peak_rss_mb"] for s in samples[size]],
            at_most=300.0,
            how="fresh process running the flow only, clips of a detailed scene (~9 MB each); "
            "VmHWM at the end",
            detail={"after_import_mb": [s["after_import_mb"] for s in samples[size]]},
        )
        for size in sizes
    ]
    smallest, largest = min(sizes), max(sizes)
    growth = [
        100 * (big["peak_rss_mb"] / small["peak_rss_mb"] - 1)
        for small, big in zip(samples[smallest], samples[largest], strict=True)
    ]
    figures.append(
        figure(
            "peak_rss_growth_pct",
            f"Peak RSS growth, {smallest} → {largest} clips",
            "%",
            growth,
            at_most=10.0,
            how="flat in count: the peak of the larger job over the smaller one's",
        )
    )
    figures.append(
        figure(
            "rss_after_import_mb",
            "RSS after importing the flow (before any job)",
            "MB",
            [s["after_import_mb"] for s in samples[smallest]],
            how="the part of the peak that is Prefect, pydantic, PyAV and the rest of the imports",
        )
    )
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="One job's peak RSS, in this process (see the module doc).")
    parser.add_argument("--clips", type=int, required=True)
    parser.add_argument("--scene", help="every clip's scene reference (default: text-only clips)")
    args = parser.parse_args(argv)
    print(json.dumps(child(args.clips, args.scene)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
