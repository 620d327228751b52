"""One small region for all patient-side tests (a registry process and a node with care on);
see region_harness.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from patient.region_harness import Region, start_region


@pytest.fixture(scope="session")
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Region]:
    yield from start_region(tmp_path_factory.mktemp("patient-region"), care=True)
