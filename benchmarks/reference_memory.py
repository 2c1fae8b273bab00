"""Peak memory (RSS) of preparing a job's reference images: 20 clips, 5 at a time, each at the pixel cap.

What a worker does with a job's images: planning verifies and caches each distinct reference once
(`clipgen.references.cache_image`, as for a data: URI, a fetch or a store:// image), then every
clip's request asks the Replicate provider for its image cropped and sized for the model (1920x1080 for
veo-3.1 at 16:9), up to `concurrency` clips at once. The provider's image step (`_image_uri`) is called
directly, 20 times on 5 threads, without a network: the images are smooth enough to go inline as data: URIs.

Each case runs in a fresh process (the kernel keeps one high-water mark per process; VmHWM, see
benchmarks/memory.py). `--repo` runs the same steps against another checkout (the code before a change):

    .venv/bin/python benchmarks/reference_memory.py                 # this checkout
    .venv/bin/python benchmarks/reference_memory.py --repo /tmp/old # e.g. `git archive <commit>` unpacked

Prints one line per case: peak RSS, RSS after imports, and the seconds the preparation took.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CLIPS = 20
CONCURRENCY = 5
SIDE = 4096  # clipgen.media.MAX_REFERENCE_PIXELS is 4096 * 4096
CASES = {
    "one shared PNG (RGBA)": ("PNG", 1),
    "one shared JPEG": ("JPEG", 1),
    "20 distinct PNGs (RGBA)": ("PNG", CLIPS),
    "20 distinct JPEGs": ("JPEG", CLIPS),
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


def child(images: list[Path]) -> dict[str, Any]:
    from replicate.client import Client

    from clipgen.providers.replicate import ReplicateProvider
    from clipgen.references import cache_image

    distinct = len(images)
    with tempfile.TemporaryDirectory(prefix="refmem-") as tmp:
        after_import = vm_hwm_mb()
        started = time.perf_counter()
        # Planning verifies and caches each distinct image once (as the CLI's upload or a fetch would).
        cached = [cache_image(image.read_bytes(), "f", Path(tmp) / "cache", image.name) for image in images]
        planned = [cached[clip % distinct] for clip in range(CLIPS)]
        provider = ReplicateProvider(Client(api_token="unused"))
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            uris = list(pool.map(lambda p: provider._image_uri(str(p), "16:9", (1920, 1080)), planned))
        seconds = time.perf_counter() - started
    assert all(uri.startswith("data:image/jpeg") for uri in uris)
    return {"peak_rss_mb": vm_hwm_mb(), "after_import_mb": after_import, "seconds": seconds}


def measure(repo: Path) -> list[dict[str, Any]]:
    rows = []
    for name, (image_format, distinct) in CASES.items():
        with tempfile.TemporaryDirectory(prefix="refmem-images-") as folder:
            images = make_images(Path(folder), image_format, distinct)  # here, not in the measured child
            result = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--child", *map(str, images)],
                cwd=repo,
                env={**os.environ, "PYTHONPATH": str(repo)},
                capture_output=True,
                text=True,
                check=True,
            )
        rows.append({"case": name, **json.loads(result.stdout.strip().splitlines()[-1])})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose clipgen is measured")
    parser.add_argument("--child", nargs="+", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return
    for row in measure(args.repo.resolve()):
        print(
            f"{row['case']:<26} peak {row['peak_rss_mb']:7.0f} MB"
            f"  after imports {row['after_import_mb']:5.0f} MB  {row['seconds']:6.2f} s"
        )


if __name__ == "__main__":
    main()
