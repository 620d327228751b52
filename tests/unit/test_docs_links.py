"""The README and the design pages stand on their own: every link points at a file inside the
repository that exists, and the quick start is the two commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_links_point_at_files_inside_the_repository(page: Path) -> None:
    text = page.read_text()
    for target in LINK.findall(text):
        assert "://" not in target, f"{page.name} links outside the repository: {target}"
        path = (page.parent / target.split("#", 1)[0]).resolve()
        assert path.is_relative_to(REPO), f"{page.name} links outside the repository: {target}"
        assert path.exists(), f"{page.name} links to a missing file: {target}"


def test_readme_links_the_design_and_keeps_two_commands() -> None:
    text = (REPO / "README.md").read_text()
    assert "(docs/architecture.md)" in text
    quick_start = text.split("## Quick start", 1)[1].split("```", 2)[1]
    commands = [line.split("#")[0].strip() for line in quick_start.splitlines()[1:]]
    assert [c for c in commands if c] == ["make demo", "make test"]
