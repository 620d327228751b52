"""Fixtures shared by the care tests that run the worker on a real store."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from node.store import FhirStore, migrate
from servicekit.storage import make_engine


@pytest.fixture
def store(db_url: str) -> Iterator[FhirStore]:
    """A migrated node store on SQLite (and on PostgreSQL when configured: ``db_url``)."""
    engine = make_engine(db_url)
    migrate(engine)
    try:
        yield FhirStore(engine)
    finally:
        engine.dispose()
