"""The benchmarks (issue 8): the flow as its users would judge it, beside baselines in the same process.

    .venv/bin/python benchmarks/run.py [--repeat N] [--quick] [--json PATH] [--only SECTION ...]
                                       [--latency-scale F] [--strict]

runs, in one process on this machine, the real flow `generate_video_clips` (Prefect test harness: a
temporary Prefect server), the real ReplicateProvider against the in-process fake Replicate API with
controlled per-clip latencies, the real local store in a temporary directory, the real SSE app and the real
thumbnailer. It prints a markdown table (each figure the median of `--repeat` runs, default 3; the runs are
listed beside it), a table of costs by model, and the machine; the same goes to `--json` (default
out/benchmarks.json). Model kling-v2.5-turbo (1920x1080 at 16:9), 10 s clips, 5 at a time, polled every
50 ms. Clips animate a detailed scene image (benchmarks/scene.py), so outputs weigh what a model's do
(~9 MB, ~7 Mbit/s) rather than the fake's 60 KB text frames.

Sections (`--only`): startup, spread, equal, slots, overhead, thumbnail, memory, sse, cost.
- startup: the first flow run in the process (Prefect's and our cold start), 1 text-only clip.
- spread: 20 clips with log-normal latencies (seeded), 5 at a time: makespan / max(longest, sum / 5),
  raw and with the run's start-up subtracted, beside a sequential and a bare asyncio.Semaphore(5) baseline
  over the same fake; the thumbnails' share of the makespan.
- equal: speed-up over the sequential baseline for 20 clips of equal latency.
- slots (issue 19): 20 clips of 10 s at the DEFAULT settings (1 s polls, the global limit) on a fake of
  their own: makespan / bound, first on a fresh fake, then with history; turnaround per slot (a
  prediction's end to the next create in its slot, from the fake's record); the bare asyncio.Semaphore(5)
  baseline at the same 1 s polls (benchmarks/slots.py).
- overhead: orchestration cost per clip with a provider that takes no time.
- thumbnail: make_thumbnail on a 10 s 1080p clip.
- memory: peak RSS for 5 and 20 clips of 10 s 1080p, each job in a fresh process.
- sse: event appended to the store -> subscriber has it.
- cost: requested / target seconds by model, and the sum of per-clip costs against the estimate.

`--quick` is a smoke run (fewer, shorter clips; tests/test_benchmarks.py): its numbers are not the
published ones. Exit code: 0 when every section ran (missed targets are marked in the table), 1 with
`--strict` when a target was missed, 2 for bad arguments; an error in a section is raised (exit 1 with a
traceback). docs/benchmarks.md has the latest table, how to reproduce it and what limits each figure.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.baselines import fetch_output, prediction_requests
from benchmarks.common import CONCURRENCY, MODEL, POLL_INTERVAL_S, make_job, new_tag, options, start_fake
from benchmarks.report import (
    Figure,
    describe_machine,
    format_cost_table,
    format_machine,
    format_table,
    load_average,
    write_json,
)
from benchmarks.scene import Scene, upload_scene
from benchmarks.schedule import Workload
from benchmarks.slots import SlotWorkload
from clipgen.catalog import MODELS
from staging.fake_replicate.server import FakeReplicateServer

SECTIONS = ("startup", "spread", "equal", "slots", "overhead", "thumbnail", "memory", "sse", "cost")
DEFAULT_JSON = Path("out/benchmarks.json")


@dataclass(frozen=True)
class Profile:
    workload: Workload
    slots: SlotWorkload
    overhead_clips: int
    thumbnail_calls: int
    rss_sizes: tuple[int, ...]
    rss_latency_s: float
    sse_events: int
    cost_models: tuple[str, ...]


FULL = Profile(
    workload=Workload(clips=20, median_latency_s=3.0, sigma=0.6, seed=8, equal_latency_s=3.0),
    slots=SlotWorkload(clips=20, latency_s=10.0),
    overhead_clips=20,
    thumbnail_calls=20,
    rss_sizes=(5, 20),
    rss_latency_s=0.5,
    sse_events=40,
    cost_models=tuple(MODELS),
)
QUICK = Profile(
    workload=Workload(clips=6, median_latency_s=0.5, sigma=0.6, seed=8, equal_latency_s=0.5),
    # Two waves and more: the second wave's creates are what turnaround is read from.
    slots=SlotWorkload(clips=10, latency_s=0.5),
    overhead_clips=6,
    thumbnail_calls=5,
    # Both at or above the concurrency: below it, fewer clips in flight would hide what one costs.
    rss_sizes=(5, 8),
    rss_latency_s=0.1,
    sse_events=8,
    cost_models=(MODEL,),
)


@dataclass
class Bench:
    """What the sections share while they run."""

    fake: FakeReplicateServer
    root: Path
    profile: Profile
    repeat: int
    scene: Scene
    detailed_clip: Path  # the fake's 10 s 1080p output of the scene, ~9 MB
    plain_clip: Path  # its text-only 10 s 1080p output, ~60 KB
    cost_rows: list[dict[str, Any]] = field(default_factory=list)
    warmed: bool = False

    def warm(self) -> None:
        """Before the first section that runs the flow with the scene (after the cold start)."""
        from benchmarks.schedule import warm_up

        if not self.warmed:
            warm_up(self.fake, self.root / "warm-up", self.scene)
            self.warmed = True


def _startup(bench: Bench) -> list[Figure]:
    from benchmarks.schedule import cold_start

    return cold_start(bench.fake, bench.root / "startup")


def _spread(bench: Bench) -> list[Figure]:
    from benchmarks.schedule import measure_spread

    bench.warm()
    workload = bench.profile.workload
    return measure_spread(bench.fake, bench.root / "spread", workload, bench.repeat, bench.scene)


def _equal(bench: Bench) -> list[Figure]:
    from benchmarks.schedule import measure_equal

    bench.warm()
    workload = bench.profile.workload
    return measure_equal(bench.fake, bench.root / "equal", workload, bench.repeat, bench.scene)


def _slots(bench: Bench) -> list[Figure]:
    from benchmarks.slots import measure_slots

    bench.warm()  # the process's first flow run, and the scene's rendering (shared by every fake), not here
    return measure_slots(bench.root / "slots", bench.profile.slots, bench.repeat)


def _overhead(bench: Bench) -> list[Figure]:
    from benchmarks.overhead import measure_overhead

    clips = bench.profile.overhead_clips
    return measure_overhead(bench.fake, bench.root / "overhead", bench.detailed_clip, clips, bench.repeat)


def _thumbnail(bench: Bench) -> list[Figure]:
    from benchmarks.overhead import measure_thumbnails

    calls = bench.profile.thumbnail_calls
    root = bench.root / "thumbnail"
    return measure_thumbnails(bench.detailed_clip, bench.plain_clip, root, calls, bench.repeat)


def _memory(bench: Bench) -> list[Figure]:
    from prefect.settings import PREFECT_API_URL

    from benchmarks.memory import measure_rss

    bench.warm()
    # The children's clips take this long on the fake, so five really are in flight at once.
    default = bench.fake.latency_s
    bench.fake.latency_s = bench.profile.rss_latency_s
    try:
        api_url = str(PREFECT_API_URL.value())
        sizes, root = bench.profile.rss_sizes, bench.root / "memory"
        return measure_rss(bench.fake, api_url, root, sizes, bench.repeat, bench.scene.reference)
    finally:
        bench.fake.latency_s = default


def _sse(bench: Bench) -> list[Figure]:
    from benchmarks.sse import measure_sse

    return measure_sse(bench.root / "sse", bench.profile.sse_events, bench.repeat)


def _cost(bench: Bench) -> list[Figure]:
    from benchmarks.cost import measure_cost

    figures, rows = measure_cost(bench.fake, bench.root / "cost", bench.profile.cost_models, MODEL)
    bench.cost_rows.extend(rows)
    return figures


RUNNERS: dict[str, Callable[[Bench], list[Figure]]] = {
    "startup": _startup,
    "spread": _spread,
    "equal": _equal,
    "slots": _slots,
    "overhead": _overhead,
    "thumbnail": _thumbnail,
    "memory": _memory,
    "sse": _sse,
    "cost": _cost,
}


def _prepare(fake: FakeReplicateServer, root: Path, profile: Profile, repeat: int) -> Bench:
    """The scene on the fake, and the fake's real 10 s 1080p outputs with and without it: the thumbnails'
    input and the instant provider's file. Fetching them renders the fake's stand-ins once, so no measured
    run pays for that rendering."""
    scene = upload_scene(fake.base_url)
    plain = prediction_requests(make_job(new_tag(), 1), options())[0]
    detailed_job = make_job(new_tag(), 1, scene=scene.reference)
    detailed = prediction_requests(detailed_job, options(), scene.model_input, root / "references")[0]
    return Bench(
        fake,
        root,
        profile,
        repeat,
        scene,
        detailed_clip=fetch_output(fake.base_url, detailed, root / "detailed.mp4"),
        plain_clip=fetch_output(fake.base_url, plain, root / "plain.mp4"),
    )


def run_sections(
    sections: Sequence[str], profile: Profile, repeat: int
) -> tuple[list[Figure], list[dict[str, Any]]]:
    from prefect.testing.utilities import prefect_test_harness

    figures: list[Figure] = []
    with (
        tempfile.TemporaryDirectory(prefix="benchmarks-") as root,
        prefect_test_harness(server_startup_timeout=120),
        start_fake() as fake,
    ):
        bench = _prepare(fake, Path(root), profile, repeat)
        for section in sections:
            began = time.monotonic()
            print(f"running: {section}", file=sys.stderr, flush=True)
            figures += RUNNERS[section](bench)
            print(f"  done in {time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)
    return figures, bench.cost_rows


def document(
    figures: list[Figure],
    cost_rows: list[dict[str, Any]],
    profile: Profile,
    repeat: int,
    argv: Sequence[str],
    load_at_start: float | None,
) -> dict[str, Any]:
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["benchmarks/run.py", *argv]),
        "settings": {
            "repeat": repeat,
            "model": MODEL,
            "concurrency": CONCURRENCY,
            "poll_interval_s": POLL_INTERVAL_S,
            "profile": asdict(profile),
        },
        "machine": describe_machine(load_at_start),
        "figures": [item.as_json() for item in figures],
        "cost": cost_rows,
    }


def render(doc: dict[str, Any], figures: list[Figure], cost_rows: list[dict[str, Any]]) -> str:
    settings = doc["settings"]
    parts = [
        "## Figures",
        "",
        f"Median of {settings['repeat']} run(s); model {MODEL}, concurrency {CONCURRENCY}, "
        f"poll interval {POLL_INTERVAL_S:g} s.",
        "",
        format_table(figures),
    ]
    if cost_rows:
        parts += ["", "## Cost by model (the example job's targets)", "", format_cost_table(cost_rows)]
    parts += ["", "## Machine", "", format_machine(doc["machine"])]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--repeat", type=int, default=None, help="runs per figure (default 3; 1 with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer, shorter clips")
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help=f"where to write (default {DEFAULT_JSON})"
    )
    parser.add_argument("--only", action="append", choices=SECTIONS, metavar="SECTION", help="run only these")
    parser.add_argument(
        "--latency-scale",
        type=float,
        default=1.0,
        help="multiply the clips' latencies in spread and equal (default 1: median 3 s)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--verbose", action="store_true", help="show Prefect's logs")
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    if repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.latency_scale <= 0:
        parser.error("--latency-scale must be positive")
    profile = scaled(QUICK if args.quick else FULL, args.latency_scale)
    sections = [s for s in SECTIONS if not args.only or s in args.only]
    # Before Prefect is imported: no usage data, and the table instead of the runs' logs.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if not args.verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")
        logging.getLogger("clipgen").setLevel(logging.ERROR)

    began, load_at_start = time.monotonic(), load_average()
    figures, cost_rows = run_sections(sections, profile, repeat)
    doc = document(figures, cost_rows, profile, repeat, argv, load_at_start)
    doc["elapsed_s"] = round(time.monotonic() - began)
    write_json(args.json, doc)
    print(render(doc, figures, cost_rows))
    missed = [item.label for item in figures if item.met is False]
    print(f"\n{len(figures)} figures in {doc['elapsed_s']} s; JSON in {args.json}; ", end="")
    print(f"targets missed: {'; '.join(missed)}" if missed else "every target met")
    return exit_code(figures, args.strict)


def scaled(profile: Profile, factor: float) -> Profile:
    """The profile with every clip latency of spread and equal multiplied by `factor`."""
    workload = profile.workload
    return replace(
        profile,
        workload=replace(
            workload,
            median_latency_s=workload.median_latency_s * factor,
            equal_latency_s=workload.equal_latency_s * factor,
        ),
    )


def exit_code(figures: Sequence[Figure], strict: bool) -> int:
    """0 when the benchmark ran; 1 only under --strict, and only when a target was missed."""
    return 1 if strict and any(item.met is False for item in figures) else 0


if __name__ == "__main__":
    sys.exit(main())
