"""``trust.pseudonymiser.PseudonymStore`` in the node's database (SQLite or PostgreSQL): the one
SQL implementation (``trust.pseudonym_store``, which the SuperNode's file store uses too) over
the node's own table, whose schema the node's migrations own."""

from __future__ import annotations

from sqlalchemy import Engine

from node.pseudonym_store.tables import pseudonyms
from trust import pseudonym_store
from trust.pseudonym_store import KINDS

__all__ = ["SqlPseudonymStore", "KINDS"]


class SqlPseudonymStore(pseudonym_store.SqlPseudonymStore):
    """``key``: the store key (``trust.pseudonymiser.store_key`` of the node's credentials)."""

    def __init__(self, engine: Engine, key: bytes) -> None:
        super().__init__(engine, pseudonyms, key)
