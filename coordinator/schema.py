"""The coordinator's tables (SQLAlchemy Core). Alembic migrations in ``coordinator/migrations``
create them; this module is the one description the code queries against.

Nothing here holds clinical content: envelope rows keep the clear header (kind, organisations,
routing pseudonym, times — no purpose and no data class, issue 23) and the sealed ciphertext
until the recipient acknowledges it.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

from trust.jti_store import jti_table

__all__ = ["metadata", "organisations", "locator", "envelopes", "routing_log", "assertion_jtis"]

metadata = MetaData()

organisations = Table(
    "organisations",
    metadata,
    Column("org_id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("level", String(16), nullable=False),
    Column("endpoints", Text, nullable=False, default="[]"),  # JSON list of {kind, url}
    Column("encryption_certificate", LargeBinary, nullable=False, default=b""),
    Column("signing_certificate", LargeBinary, nullable=False, default=b""),
    Column("cert_fingerprints", Text, nullable=False, default="[]"),  # JSON list of sha256 hex
    Column("revoked", Boolean, nullable=False, default=False),
    Column("registered_at", Float, nullable=False),
    Column("last_seen", Float, nullable=True),
)

locator = Table(
    "locator",
    metadata,
    Column("patient_pseudonym", String(128), primary_key=True),
    Column("org_id", String(64), primary_key=True),
    Column("published_at", Float, nullable=False),
)

envelopes = Table(
    "envelopes",
    metadata,
    Column("envelope_id", String(64), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("sender", String(64), nullable=False),
    Column("recipient", String(64), nullable=False),
    Column("patient_pseudonym", String(128), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("sealed", LargeBinary, nullable=False),  # ciphertext; emptied once acknowledged
    Column("size", Integer, nullable=False),
    Column("digest", String(64), nullable=False),  # sha256 of sealed, for duplicate detection
    # queued | delivering | delivered | rejected | dead
    Column("state", String(16), nullable=False),
    Column("reason", Text, nullable=False, default=""),
    Column("attempts", Integer, nullable=False, default=0),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until", Float, nullable=True),
    Column("accepted_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)
Index(
    "ix_envelopes_recipient_state",
    envelopes.c.recipient,
    envelopes.c.state,
    envelopes.c.accepted_at,
)
Index("ix_envelopes_sender_accepted", envelopes.c.sender, envelopes.c.accepted_at)

routing_log = Table(
    "routing_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("envelope_id", String(64), nullable=False),
    Column("sender", String(64), nullable=False),
    Column("recipient", String(64), nullable=False),
    Column("kind", String(32), nullable=False),
    # accepted | refused | delivered | rejected | dead | duplicate
    Column("decision", String(16), nullable=False),
    Column("reason", Text, nullable=False, default=""),
)
Index("ix_routing_log_decision_at", routing_log.c.decision, routing_log.c.at)

#: ``jti`` of every accepted organisation assertion (status API, model registry) for its whole
#: accepted window (exp + leeway): single use across restarts and replicas (trust.jti_store)
assertion_jtis = jti_table("coordinator_assertion_jti", metadata)
