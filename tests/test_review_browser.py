"""review.html opened offline in a real headless Chromium (the web view's harness); a screenshot is kept.

Skipped cleanly without Debian's chromium and chromium-driver. The screenshot stays under pytest's tmp dir and
is copied to `$DISTILL_ARTIFACTS` when set.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from _labelsets import CLASSES, write_label_set
from test_web_browser import CHROMEDRIVER, CHROMIUM, browser  # noqa: F401  (`browser` is a fixture)

from distill.evaluate.review import run_review

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and Path(CHROMEDRIVER).exists()),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)


def test_review_page_opens_offline_and_shows_every_class(tmp_path: Path, browser) -> None:  # noqa: F811
    labels = write_label_set(tmp_path / "labels", videos=3, frames_per_class=6, flip=0.1)
    run_review(labels, tmp_path / "review")
    page = tmp_path / "review" / "review.html"
    browser.get(page.as_uri())
    assert browser.title == "distill review"
    shown = browser.execute_script(
        "return [...document.querySelectorAll('h3[id^=class-]')]"
        ".filter(e => e.offsetHeight > 0).map(e => e.textContent)"
    )
    assert [text.split(":")[0] for text in shown] == CLASSES
    images = browser.execute_script("return [...document.images].map(i => [i.complete, i.naturalWidth])")
    assert images and all(done and width > 0 for done, width in images)  # every thumbnail decoded from the page
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert [url for url in fetched if not url.startswith("data:")] == []  # nothing fetched from elsewhere
    assert browser.execute_script("return document.querySelectorAll('svg rect').length") > 3 * len(CLASSES)
    shot = tmp_path / "review-page.png"
    browser.set_window_size(1100, 1600)
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("DISTILL_ARTIFACTS"):
        Path(os.environ["DISTILL_ARTIFACTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(os.environ["DISTILL_ARTIFACTS"]) / shot.name)
