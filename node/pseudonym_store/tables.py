"""The pseudonym store's table (SQLAlchemy Core). Schema changes go through ./migrations."""

from __future__ import annotations

from sqlalchemy import Column, Integer, MetaData, String, Table

__all__ = ["metadata", "pseudonyms"]

metadata = MetaData()

# One row per pseudonym this node obtained: ``kind`` "regional" (a patient's identifier) or
# "routing" (a regional pseudonym and a pair of organisations), the authority's key version and
# that key's fingerprint (its public key: a key re-made under the same number has another), the
# SHA-256 (hex) of the OPRF input — never the input, which names the patient — and the pseudonym.
# No key: the node still cannot compute a pseudonym of anyone it does not hold.
pseudonyms = Table(
    "node_pseudonyms",
    metadata,
    Column("kind", String(16), primary_key=True),
    Column("key_version", Integer, primary_key=True, autoincrement=False),
    Column("key_fingerprint", String(64), primary_key=True),
    Column("input_digest", String(64), primary_key=True),
    Column("pseudonym", String(128), nullable=False),
)
