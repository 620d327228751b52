"""The registry's tables (SQLAlchemy Core). Migrations in consent/migrations/ create them.

The audit ledger's table belongs to :class:`trust.audit_ledger.AuditLedger`, which creates it.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

from trust.jti_store import jti_table
from trust.login_throttle import throttle_table

__all__ = [
    "metadata",
    "consents",
    "patients",
    "enrolment_codes",
    "assertion_jtis",
    "oidc_codes",
    "login_throttle",
    "envelope_questions",
]

metadata = MetaData()

#: current version of each consent (FHIR JSON body); patients are pseudonyms only
consents = Table(
    "consent_resources",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("patient", String(128), nullable=False, index=True),
    Column("status", String(16), nullable=False),
    Column("version", Integer, nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

#: enrolled patients: login handle and argon2 password hash, keyed by pseudonym
patients = Table(
    "consent_patients",
    metadata,
    Column("pseudonym", String(128), primary_key=True),
    Column("handle", String(32), nullable=False, unique=True),
    Column("password_hash", Text, nullable=False),
    Column("enrolled_by", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

#: one-time enrolment codes (SHA-256 of the code at rest; burnt on first use)
enrolment_codes = Table(
    "consent_enrolment_codes",
    metadata,
    Column("code_hash", String(64), primary_key=True),
    Column("pseudonym", String(128), nullable=False, index=True),
    Column("issued_by", String(64), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("used_at", DateTime(timezone=True), nullable=True),
)

#: ``jti`` of every accepted organisation assertion, for its whole accepted window (exp + leeway):
#: a replay is refused after a restart and in another worker (trust.jti_store)
assertion_jtis = jti_table("consent_assertion_jti", metadata)

#: OpenID Connect authorization codes (SHA-256 at rest; single use, 60 s; consent/oidc.py)
oidc_codes = Table(
    "consent_oidc_codes",
    metadata,
    Column("code_hash", String(64), primary_key=True),
    Column("pseudonym", String(128), nullable=False),
    Column("client_id", String(128), nullable=False),
    Column("redirect_uri", Text, nullable=False),
    Column("code_challenge", String(64), nullable=False),
    Column("scope", Text, nullable=False),
    Column("nonce", String(256), nullable=True),
    Column("auth_time", Integer, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
    Column("used_at", DateTime(timezone=True), nullable=True),
)

#: consecutive failed patient logins per account (trust.login_throttle; keyed by SHA-256 of the
#: user name, so unknown names are throttled alike and no name is stored)
login_throttle = throttle_table("consent_login_throttle", metadata)

#: the question each envelope-bound decision answered (``$decide`` with ``envelope``), so the
#: coordinator can have it decided again by envelope id without ever naming the patient
envelope_questions = Table(
    "consent_envelope_questions",
    metadata,
    Column("envelope_id", String(36), primary_key=True),
    Column("patient", String(128), nullable=False),
    Column("requester", String(64), nullable=False),
    Column("recipient", String(64), nullable=False),
    Column("purpose", String(16), nullable=False),
    Column("classes", Text, nullable=False),  # JSON list: the classes asked for
    # JSON list: the classes the decision permitted — what a $recheck decides again (all of them
    # must still be permitted); [] for a deny
    Column("permitted", Text, nullable=False, server_default="[]"),
    Column("break_glass", Boolean, nullable=False),
    Column("asked_at", DateTime(timezone=True), nullable=False, index=True),
    # what the id binds (consent_0007): "envelope", or "lookup" — a record-locator lookup's id
    # (issue 23); a decision bound one way is never re-checked the other way
    Column("bound", String(8), nullable=False, server_default="envelope"),
)

#: one row: a number that moves (in the same transaction) with every consent created or changed —
#: revocations included — so a checker holding an earlier number knows something may have
#: changed (issue 19: the coordinator reuses its routing decision at delivery only when the epoch
#: has not moved, ``coordinator/consent_gate.py``)
consent_epoch = Table(
    "consent_epoch",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("epoch", BigInteger, nullable=False),
)
