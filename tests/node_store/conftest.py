"""Fixtures of the FHIR store tests: a migrated store per database (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from node.store import FhirStore
from node.store.tables import resource_version


@cache
def _load(path: str) -> str:
    return Path(path).read_text()


def load_json(path: Path) -> dict[str, Any]:
    """A fresh copy of a shared JSON file (parsed each time, so tests cannot share mutations)."""
    return json.loads(_load(str(path)))


def synthea_files(synthea_dir: Path) -> list[Path]:
    """Hospital and practitioner bundles first (patients reference them), then the patients."""
    support = sorted(synthea_dir.glob("hospitalInformation*.json")) + sorted(
        synthea_dir.glob("practitionerInformation*.json")
    )
    patients = sorted(p for p in synthea_dir.glob("*.json") if p not in support)
    return support + patients


def version_rows(store: FhirStore) -> int:
    with store.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(resource_version)) or 0)
