"""Helpers of the browser tests: screenshots, axe-core, the CSRF token of a page."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

SCREENSHOTS = Path(__file__).parent / "screenshots"
# The story's people: a heart-failure patient and another at the clinic; a patient of the
# hospital who signs in with the regional login.
HF_ID, OTHER_ID, HOSPITAL_ID = "110101195103140021", "110101196002020022", "110101197004040033"


def shot(page: Any, name: str) -> None:
    """A full-page screenshot named for the page and its language."""
    SCREENSHOTS.mkdir(exist_ok=True)
    lang = page.evaluate("document.documentElement.lang")
    page.screenshot(path=str(SCREENSHOTS / f"{name}-{lang}.png"), full_page=True)


def axe_serious(page: Any) -> list[str]:
    """axe-core's serious and critical violations on the page (rule id: a target each)."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    return [
        f"{v['id']} ({v['impact']}): {v['nodes'][0]['target'] if v['nodes'] else ''}"
        for v in results.response["violations"]
        if v.get("impact") in ("serious", "critical")
    ]


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)
