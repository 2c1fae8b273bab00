"""The job page in headless Chromium (Debian's chromium + chromium-driver): cards fill in live while the flow
runs in another process, and every card ends with its thumbnail. Saves a screenshot to out/screenshots/."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver

from clipgen.server import create_app
from clipgen.settings import Settings
from tests.browser import SCREENSHOTS, headless_chromium
from tests.stack.gateway import ServerThread
from tests.test_server import start_job, wait_for_job

CLIPS = 4

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    with headless_chromium(tmp_path / "chromium") as driver:
        yield driver


def thumbnails_loaded(driver: webdriver.Chrome) -> int:
    count = driver.execute_script(
        "return [...document.querySelectorAll('.card img.thumb')]"
        ".filter(i => i.complete && i.naturalWidth).length"
    )
    return int(count)


def test_the_job_page_fills_in_live(browser: webdriver.Chrome, tmp_path: Path, data_dir: Path) -> None:
    with ServerThread(create_app(Settings(), poll_interval_s=0.1), lifespan="on") as server:
        # Paced: a clip a second, one at a time, so the page is seen filling in however fast the machine is.
        flags = ("--provider", "tests.doubles:paced_provider", "--concurrency", "1")
        job_id, process = start_job(tmp_path, data_dir, CLIPS, 4.0, *flags)
        try:
            wait_for_job(server.base_url, job_id)
            browser.get(f"{server.base_url}/jobs/{job_id}/view")
            seen: list[int] = []
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                seen.append(thumbnails_loaded(browser))
                state = browser.execute_script("return document.body.dataset.state")
                if seen[-1] == CLIPS and state == "completed":
                    break
                time.sleep(0.1)
            time.sleep(0.5)  # let the progress bar's transition finish before the picture
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(str(SCREENSHOTS / "job-page.png"))
        finally:
            output, _ = process.communicate(timeout=120)
        assert process.returncode == 0, output

    assert seen[-1] == CLIPS, f"thumbnails seen over time: {seen}"
    assert len(set(seen)) >= 3, f"the cards should fill in one by one, not all at once: {seen}"
    cards = browser.execute_script("return document.querySelectorAll('.card[data-status=success]').length")
    assert cards == CLIPS
    summary = browser.execute_script("return document.getElementById('summary').textContent")
    assert summary.startswith(f"completed · {CLIPS}/{CLIPS} clips")
    shutil.copy(SCREENSHOTS / "job-page.png", tmp_path / "job-page.png")
