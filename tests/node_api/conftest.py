"""Fixtures of the node API tests (the harness itself is in node_harness.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from node_api.node_harness import Node, make_node


@pytest.fixture
def node(db_url: str, tmp_path: Path) -> Iterator[Node]:
    yield from make_node(db_url, tmp_path / "node")
