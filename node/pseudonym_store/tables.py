"""The pseudonym store's table (SQLAlchemy Core). Schema changes go through ./migrations."""

from __future__ import annotations

from sqlalchemy import MetaData

from trust.pseudonym_store import format_table, pseudonym_table

__all__ = ["metadata", "pseudonyms", "store_format"]

metadata = MetaData()

# One row per pseudonym this node obtained (trust.pseudonym_store.pseudonym_table: kind, the
# authority's key version and fingerprint, the HMAC-SHA256 of the OPRF input under the store key
# derived from the organisation's signing key — never the input, which names the patient — and
# the pseudonym). No key: the node still cannot compute a pseudonym of anyone it does not hold,
# and a stolen table cannot be brute-forced without the organisation's signing key.
pseudonyms = pseudonym_table("node_pseudonyms", metadata)

# The store's format row (n0004; trust.pseudonym_store.format_table): the format and a check value
# of the store key its entries are under. The node's start compares it with its own store key
# and deletes every entry of another one (the organisation's signing key was re-issued).
store_format = format_table("node_pseudonym_store_format", metadata)
