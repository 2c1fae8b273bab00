"""Peak memory (RSS) of preparing a job's reference images: 20 clips, 5 at a time, each at the pixel cap.

What a worker does with a job's images: planning verifies and caches each distinct reference once
(`clipgen.references.cache_image`, as for a data: URI, a fetch or a store:// image), then every
clip's request asks the Replicate provider for its image cropped and sized for the model (1920x1080 for
veo-3.1 at 16:9), up to `concurrency` clips at once. The provider's image step (`_images.uri`) is called
directly, 20 times on 5 threads, without a network: the images are smooth enough to go inline as data: URIs.
The local provider's cases call its image step (`LocalProvider._image`: the scene fitted to the 1920x1080
frame, kept for the run's later clips) the same way; the rendering is not measured. In a checkout from
before that step existed they decode the image whole, as its `generate` did.

Each case runs in a fresh process (the kernel keeps one high-water mark per process; VmHWM, see
benchmarks/memory.py), twice: with glibc's malloc as it comes, and with `MALLOC_MMAP_THRESHOLD_=131072`.
Pillow allocates an image in blocks of up to 16 MB; glibc serves the first from mmap and returns it to the
kernel when freed, but then raises its mmap threshold past that size, so later blocks come from its heaps
(one per thread, up to 8 per core), which keep freed memory mapped. A fixed threshold turns that off: every
block is mapped and unmapped, and the peak is close to what the process really held at once.
`--repo` runs the same steps against another checkout (the code before a change):

    .venv/bin/python benchmarks/reference_memory.py                 # this checkout
    .venv/bin/python benchmarks/reference_memory.py --repo /tmp/old # e.g. `git archive <commit>` unpacked

Prints one line per case: peak RSS with either malloc, RSS after imports, and the seconds the preparation
took (default malloc).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CLIPS = 20
CONCURRENCY = 5
SIDE = 4096  # clipgen.images.MAX_REFERENCE_PIXELS is 4096 * 4096
FIXED_MMAP_THRESHOLD = 128 * 1024  # glibc's default, kept from rising (see the module's docstring)
CASES = {
    "one shared PNG (RGBA)": ("PNG", 1, "replicate"),
    "one shared JPEG": ("JPEG", 1, "replicate"),
    "20 distinct PNGs (RGBA)": ("PNG", CLIPS, "replicate"),
    "20 distinct JPEGs": ("JPEG", CLIPS, "replicate"),
    "local: one shared PNG": ("PNG", 1, "local"),
    "local: 20 distinct PNGs": ("PNG", CLIPS, "local"),
}


def vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def make_images(folder: Path, image_format: str, count: int) -> list[Path]:
    """`count` distinct SIDE x SIDE images: smooth gradients (decoded size is what matters, not content)."""
    from PIL import Image

    paths = []
    base = Image.linear_gradient("L").resize((SIDE, SIDE))
    for index in range(count):
        mode = "RGBA" if image_format == "PNG" else "RGB"
        bands = [base, base.rotate(90), Image.new("L", (SIDE, SIDE), index * 10)]
        image = Image.merge("RGB", bands).convert(mode)
        path = folder / f"scene_{index}.{image_format.lower()}"
        image.save(path, image_format, **({"compress_level": 1} if image_format == "PNG" else {}))
        paths.append(path)
    return paths


def child(provider_name: str, images: list[Path]) -> dict[str, Any]:
    from clipgen.references import cache_image

    distinct = len(images)
    with tempfile.TemporaryDirectory(prefix="refmem-") as tmp:
        after_import = vm_hwm_mb()
        started = time.perf_counter()
        # Planning verifies and caches each distinct image once (as the CLI's upload or a fetch would).
        cached = [cache_image(image.read_bytes(), "f", Path(tmp) / "cache", image.name) for image in images]
        planned = [cached[clip % distinct] for clip in range(CLIPS)]
        prepare = image_step(provider_name)
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            done = list(pool.map(prepare, planned))
        seconds = time.perf_counter() - started
    assert done == [True] * CLIPS
    return {"peak_rss_mb": vm_hwm_mb(), "after_import_mb": after_import, "seconds": seconds}


def image_step(provider_name: str) -> Callable[[Path], bool]:
    """What one clip of the provider does with its image, before anything is sent or rendered. What it
    makes is dropped at once, as a clip drops it when it has sent or rendered it."""
    if provider_name == "replicate":
        from replicate.client import Client

        from clipgen.providers.replicate import ReplicateProvider

        replicate = ReplicateProvider(Client(api_token="unused"))
        return lambda path: replicate._images.uri(str(path), "16:9", (1920, 1080)).startswith("data:image/")
    from clipgen.providers.local import LocalProvider

    local = LocalProvider()
    if hasattr(local, "_image"):
        return lambda path: local._image(str(path), (1920, 1080)).size == (1920, 1080)
    # Before the provider kept its images, each clip decoded its scene whole (then in clipgen.media).
    from clipgen.media import load_image  # type: ignore[attr-defined]

    return lambda path: load_image(path).size == (SIDE, SIDE)


def measure(repo: Path) -> list[dict[str, Any]]:
    rows = []
    for name, (image_format, distinct, provider_name) in CASES.items():
        with tempfile.TemporaryDirectory(prefix="refmem-images-") as folder:
            images = make_images(Path(folder), image_format, distinct)  # here, not in the measured child
            default = run_child(repo, provider_name, images, {})
            fixed = {"MALLOC_MMAP_THRESHOLD_": str(FIXED_MMAP_THRESHOLD)}
            mapped = run_child(repo, provider_name, images, fixed)
        rows.append({"case": name, **default, "peak_rss_mapped_mb": mapped["peak_rss_mb"]})
    return rows


def run_child(
    repo: Path, provider_name: str, images: list[Path], malloc_env: dict[str, str]
) -> dict[str, Any]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", provider_name, *map(str, images)]
    result = subprocess.run(
        command,
        cwd=repo,
        env={**env, **malloc_env, "PYTHONPATH": str(repo)},
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose clipgen is measured")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], [Path(image) for image in args.child[1:]])))
        return
    for row in measure(args.repo.resolve()):
        print(
            f"{row['case']:<25} peak {row['peak_rss_mb']:5.0f} MB"
            f" ({row['peak_rss_mapped_mb']:4.0f} MB with MALLOC_MMAP_THRESHOLD_={FIXED_MMAP_THRESHOLD})"
            f"  after imports {row['after_import_mb']:3.0f} MB  {row['seconds']:6.2f} s"
        )


if __name__ == "__main__":
    main()
