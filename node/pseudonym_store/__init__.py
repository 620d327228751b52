"""The node's persistent pseudonym store (issue 23): the pseudonyms this node obtained from the
pseudonymisation authority, kept in its own database so a restart asks again for none of them.

``SqlPseudonymStore(engine, key)`` implements ``trust.pseudonymiser.PseudonymStore``;
``open_node_store(engine, key)`` opens it at start, deleting entries of another store key; the
feature ``PSEUDONYMS`` offers its migrations; ``node/app.py`` hands the store to the
pseudonymiser."""

from node.pseudonym_store.sql_store import SqlPseudonymStore, open_node_store

__all__ = ["SqlPseudonymStore", "open_node_store"]
