"""Fixtures shared by the whole suite: databases (SQLite always, PostgreSQL when configured),
the shared FHIR test data, and scratch directories."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("IPJMS_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
PG_URL = os.environ.get("IPJMS_TEST_POSTGRES_URL")


@pytest.fixture(scope="session")
def synthea_dir() -> Path:
    path = SHARED_DATA / "fhir" / "synthea"
    if not path.is_dir():
        pytest.fail(f"shared Synthea data not found at {path} (set IPJMS_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def ips_dir() -> Path:
    path = SHARED_DATA / "fhir" / "ips"
    if not path.is_dir():
        pytest.fail(f"shared IPS data not found at {path} (set IPJMS_SHARED_DATA)")
    return path


def _pg_admin_url() -> str:
    assert PG_URL
    return PG_URL.replace("postgresql+psycopg://", "postgresql://")


def create_pg_database() -> str:
    """Create a fresh, uniquely named PostgreSQL database and return its URL."""
    import psycopg

    name = f"ipjms_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_pg_admin_url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = _pg_admin_url().rsplit("/", 1)[0]
    return f"{base}/{name}"


def drop_pg_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(_pg_admin_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test (skipped when no server is configured)."""
    if not PG_URL:
        pytest.skip("IPJMS_TEST_POSTGRES_URL not set")
    url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test using this runs once on SQLite and once on PostgreSQL (when configured)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    if not PG_URL:
        pytest.skip("IPJMS_TEST_POSTGRES_URL not set")
    url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(url)
