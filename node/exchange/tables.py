"""The node's exchange bookkeeping (same database as its FHIR store; own Alembic folder).

``exchange_inbound``: one row per envelope this node has processed, written in the same
transaction as the import, so a redelivered envelope is recognised and never imported twice.
``exchange_outbound``: what this node sent (the sealed bytes are kept until the coordinator
accepted them, so a retry re-sends the very same envelope id).
``exchange_pseudonyms``: local patient id of each pseudonym this node holds or has imported.
"""

from __future__ import annotations

from sqlalchemy import Column, Float, LargeBinary, MetaData, String, Table, Text

__all__ = ["metadata", "inbound", "outbound", "pseudonyms"]

metadata = MetaData()

inbound = Table(
    "exchange_inbound",
    metadata,
    Column("envelope_id", String(64), primary_key=True),
    Column("sender", String(64), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("outcome", String(16), nullable=False),  # imported | rejected | answered
    Column("detail", Text, nullable=False, default=""),
    Column("task_uid", String(64), nullable=True),
    Column("patient_id", String(64), nullable=True),
    Column("received_at", Float, nullable=False),
)

outbound = Table(
    "exchange_outbound",
    metadata,
    Column("envelope_id", String(64), primary_key=True),
    Column("recipient", String(64), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("classes", Text, nullable=False),
    Column("task_uid", String(64), nullable=True),
    Column("patient_id", String(64), nullable=True),
    Column("state", String(16), nullable=False),  # pending | sent | refused
    Column("detail", Text, nullable=False, default=""),
    Column("sealed", LargeBinary, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("sent_at", Float, nullable=True),
)

pseudonyms = Table(
    "exchange_pseudonyms",
    metadata,
    Column("pseudonym", String(128), primary_key=True),
    Column("patient_id", String(64), nullable=False),
)
