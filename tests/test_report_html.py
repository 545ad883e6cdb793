"""The HTML report: self-contained, and it opens in headless Chromium with every image loaded.

The page is built from real, diagnosed digits runs (``report_sweep``). Chromium is
Debian's /usr/bin/chromium driven by the Python playwright package; the test is
skipped only when that binary is absent.
"""

from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from bpexp.report.build import write_report

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


class _Resources(HTMLParser):
    """Every URL the page would load: img/src, link/href, script/src, and CSS url(...)."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[str] = []
        self.images = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images += 1
            self.loads.append(attrs.get("src") or "")
        elif tag in ("script", "iframe") and attrs.get("src"):
            self.loads.append(attrs["src"])
        elif tag == "link" and attrs.get("href"):
            self.loads.append(attrs["href"])


@pytest.fixture(scope="module")
def report_page(report_sweep, tmp_path_factory):
    files = write_report(report_sweep, tmp_path_factory.mktemp("report"))
    return files


def test_page_is_self_contained(report_page):
    html = report_page.html.read_text()
    parser = _Resources()
    parser.feed(html)
    assert parser.images == len(report_page.figures) >= 6
    assert all(src.startswith("data:image/png;base64,") for src in parser.loads)
    assert not re.search(r"url\((?!data:)", html)
    assert "<script" not in html  # nothing to run, nothing to fetch
    # Every numbered section is present, each with its sentence.
    for n in range(1, 9):
        assert f"<h2>{n}. " in html
    assert html.count('class="read"') >= 8


def test_markdown_summary_holds_the_tables(report_page, report_sweep):
    md = report_page.markdown.read_text()
    assert md.startswith(f"# bpexp report: {report_sweep.study_name}")
    assert "| mode | trials |" in md and "| stop_loss |" in md
    assert f"bpexp train --spec {report_page.spec.name}" in md
    assert "data:image" not in md


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium")
def test_page_opens_in_chromium_with_every_image_and_no_error(report_page, tmp_path):
    from PIL import Image
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    failed: list[str] = []
    shot = tmp_path / "report.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        )
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("requestfailed", lambda r: failed.append(r.url[:80]))
            page.goto(report_page.html.as_uri(), wait_until="load")
            widths = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
            title = page.title()
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert errors == [] and failed == []
    assert len(widths) == len(report_page.figures)
    assert all(complete and width > 0 for complete, width in widths), widths
    assert title.startswith("bpexp report")
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / "report.png")
    image = Image.open(shot).convert("RGB")
    pixels = np.asarray(image.resize((image.width // 4, image.height // 4))).reshape(-1, 3)
    distinct = len(np.unique(pixels, axis=0))
    non_white = float(np.mean(pixels.min(axis=1) < 235))
    assert image.height > 2000  # eight sections, not an empty shell
    assert distinct > 500, distinct
    assert non_white > 0.05, non_white
