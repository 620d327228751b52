"""The node's account tables (SQLAlchemy Core). Schema changes go through ./migrations."""

from __future__ import annotations

from sqlalchemy import Boolean, Column, DateTime, Float, MetaData, String, Table, Text

__all__ = ["metadata", "accounts", "backend_clients", "assertion_jtis"]

metadata = MetaData()

# People who log in with a password: doctor, nurse, admin, or a patient linked to one Patient.
accounts = Table(
    "node_accounts",
    metadata,
    Column("username", String(128), primary_key=True),
    Column("password_hash", Text, nullable=False),
    Column("role", String(16), nullable=False),
    Column("patient_id", String(64), nullable=True),
    Column("active", Boolean, nullable=False, default=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# Registered SMART Backend Services clients (e.g. the node's Flower SuperNode): their public key
# verifies their signed client assertions; ``scopes`` caps what they may be granted.
backend_clients = Table(
    "node_backend_clients",
    metadata,
    Column("client_id", String(128), primary_key=True),
    Column("public_key_pem", Text, nullable=False),
    Column("scopes", Text, nullable=False),
    Column("active", Boolean, nullable=False, default=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# ``jti`` of every accepted client assertion until it expires: a second use is a replay. In the
# database (not memory) so replays are caught across worker processes and restarts.
assertion_jtis = Table(
    "node_assertion_jti",
    metadata,
    Column("jti", String(255), primary_key=True),
    Column("expires_at", Float, nullable=False, index=True),
)
