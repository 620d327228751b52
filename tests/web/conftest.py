"""Browser fixtures: Playwright driving Debian's Chromium (``/usr/bin/chromium``; CI installs it
in ``.ci/run``). Without the ``playwright`` package or the browser the tests skip, saying which
is missing. Screenshots go to ``tests/web/screenshots/`` (git-ignored); axe-core (bundled by
``axe-playwright-python``) checks every page for serious and critical violations."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "exchange"))

CHROMIUM = Path(os.environ.get("IPJMS_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = Path(__file__).parent / "screenshots"


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install playwright)")
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium, or IPJMS_CHROMIUM)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield browser
        finally:
            browser.close()
