"""The pseudonym store as a node feature (``PSEUDONYMS``): its table's migrations only. The store
itself is built once by the composition root (``node/app.py``) and given to the pseudonymiser."""

from __future__ import annotations

from pathlib import Path

from node.feature import Feature

__all__ = ["PSEUDONYMS", "MIGRATIONS_DIR"]

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

PSEUDONYMS = Feature(name="pseudonyms", migrations=(MIGRATIONS_DIR,))
