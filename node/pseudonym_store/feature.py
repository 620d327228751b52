"""The pseudonym store as a node feature (``PSEUDONYMS``): its table's migrations only. The store
itself is built once by the composition root (``node/app.py``) and given to the pseudonymiser."""

from __future__ import annotations

from node.feature import Feature
from node.schemas import PSEUDONYM_MIGRATIONS as MIGRATIONS_DIR

__all__ = ["PSEUDONYMS", "MIGRATIONS_DIR"]

PSEUDONYMS = Feature(name="pseudonyms", migrations=(MIGRATIONS_DIR,))
