"""The node's account tables (SQLAlchemy Core). Schema changes go through ./migrations."""

from __future__ import annotations

from sqlalchemy import Boolean, Column, DateTime, Float, MetaData, String, Table, Text

from trust.login_throttle import throttle_table

__all__ = [
    "metadata",
    "accounts",
    "backend_clients",
    "assertion_jtis",
    "smart_apps",
    "authorization_codes",
    "refresh_tokens",
    "login_throttle",
    "launch_contexts",
]

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
    # The FHIR resource this person is (SMART ``fhirUser``), e.g. ``Practitioner/p-1``; a
    # patient account's is its Patient. Migration a0003.
    Column("fhir_user", String(160), nullable=True),
)

# Registered SMART Backend Services clients (e.g. the node's Flower SuperNode): their public key
# verifies their signed client assertions; ``scopes`` caps what they may be granted.
backend_clients = Table(
    "node_backend_clients",
    metadata,
    Column("client_id", String(128), primary_key=True),
    Column("public_key_pem", Text, nullable=False),  # "" when the keys come from jwks_url
    Column("scopes", Text, nullable=False),
    Column("active", Boolean, nullable=False, default=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # SMART Backend Services: the client's keys may be published at a JWKS URL instead (a0003).
    Column("jwks_url", Text, nullable=True),
)

# ``jti`` of every accepted client assertion until it expires: a second use is a replay. In the
# database (not memory) so replays are caught across worker processes and restarts.
assertion_jtis = Table(
    "node_assertion_jti",
    metadata,
    Column("jti", String(255), primary_key=True),
    Column("expires_at", Float, nullable=False, index=True),
)

# SMART apps that sign users in with the authorization-code flow (node/auth/smart_apps.py):
# registered redirect URIs (space-separated), the scopes the app may ask for, and for a
# confidential app the SHA-256 of its (server-generated, high-entropy) secret; NULL = public app
# (PKCE only). Migration a0003; ``launch_url`` (a0006): where an EHR launch from the doctor
# pages sends the browser, NULL = not launched from the pages.
smart_apps = Table(
    "node_smart_apps",
    metadata,
    Column("client_id", String(128), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("redirect_uris", Text, nullable=False),
    Column("scopes", Text, nullable=False),
    Column("secret_sha256", String(64), nullable=True),
    Column("active", Boolean, nullable=False, default=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("launch_url", Text, nullable=True),
)

# Authorization codes by SHA-256 (the code itself is never stored): one use, short-lived. In the
# database so a code issued by one worker is redeemed by another, and redeemed only once.
authorization_codes = Table(
    "node_authorization_codes",
    metadata,
    Column("code_sha256", String(64), primary_key=True),
    Column("client_id", String(128), nullable=False),
    Column("redirect_uri", Text, nullable=False),
    Column("grant", Text, nullable=False),  # JSON: subject, role, scopes, patient, fhirUser, nonce
    Column("code_challenge", String(128), nullable=False),
    Column("expires_at", Float, nullable=False, index=True),
    Column("used_at", Float, nullable=True),
)

# Refresh tokens by SHA-256, rotated on every use; ``family`` links a token to the code it came
# from, so a replayed (already rotated) token revokes the whole family.
refresh_tokens = Table(
    "node_refresh_tokens",
    metadata,
    Column("token_sha256", String(64), primary_key=True),
    Column("family", String(64), nullable=False, index=True),
    Column("client_id", String(128), nullable=False),
    Column("grant", Text, nullable=False),
    Column("expires_at", Float, nullable=False, index=True),
    Column("revoked", Boolean, nullable=False, default=False),
)

# EHR launch contexts (node/auth/ehr_launch.py) by SHA-256 of the opaque handle: the patient a
# practitioner had in view, for one app; one use, short-lived. Migration a0005.
launch_contexts = Table(
    "node_launch_contexts",
    metadata,
    Column("handle_sha256", String(64), primary_key=True),
    Column("client_id", String(128), nullable=False),
    Column("subject", String(128), nullable=False),
    Column("patient_id", String(64), nullable=False),
    Column("expires_at", Float, nullable=False, index=True),
    Column("used_at", Float, nullable=True),
)

# Consecutive failed password sign-ins per account (trust.login_throttle: keyed by the SHA-256 of
# the user name, so unknown names are throttled alike and no name is stored).
login_throttle = throttle_table("node_login_throttle", metadata)
