"""``trust.pseudonymiser.PseudonymStore`` in the node's database (SQLite or PostgreSQL): the one
SQL implementation (``trust.pseudonym_store``, which the SuperNode's file store uses too) over
the node's own table, whose schema the node's migrations own.

The node opens it with :func:`open_node_store` at start: entries stored under another store key
(the organisation's signing key was re-issued, so the key derived from it changed) are deleted
there, by the rule the SuperNode's file follows too (``trust.pseudonym_store.forget_other_keys``,
the format row ``node_pseudonym_store_format``, migration n0004)."""

from __future__ import annotations

import logging

from sqlalchemy import Engine

from node.pseudonym_store.tables import pseudonyms, store_format
from trust import pseudonym_store
from trust.pseudonym_store import KINDS, forget_other_keys

__all__ = ["SqlPseudonymStore", "KINDS", "open_node_store"]

log = logging.getLogger("ipjms.pseudonymiser")


class SqlPseudonymStore(pseudonym_store.SqlPseudonymStore):
    """``key``: the store key (``trust.pseudonymiser.store_key`` of the node's credentials)."""

    def __init__(self, engine: Engine, key: bytes) -> None:
        super().__init__(engine, pseudonyms, key)


def open_node_store(engine: Engine, key: bytes) -> SqlPseudonymStore:
    """The node's store under ``key``, after deleting every entry stored under another store
    key (none could match again; entries from before n0004 cannot be told apart, so they go
    too). Each patient is then asked of the authority again when met, once — the budget cost
    of a signing-key re-issue, as before, but no stale rows left behind."""
    store = SqlPseudonymStore(engine, key)
    gone = forget_other_keys(store, store_format)
    if gone:
        log.warning(
            "pseudonym store: %d entries stored under another store key (the organisation's "
            "signing key was re-issued, or they predate the key check) deleted; each patient "
            "is asked of the authority again when met",
            gone,
        )
    return store
