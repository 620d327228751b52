"""SMART App Launch: registered apps, authorization codes, refresh tokens; backend clients by
JWKS URL; an account's fhirUser.

Revision ID: a0003
Revises: a0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "a0003"
down_revision = "a0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("node_backend_clients", sa.Column("jwks_url", sa.Text, nullable=True))
    op.add_column("node_accounts", sa.Column("fhir_user", sa.String(160), nullable=True))
    op.create_table(
        "node_smart_apps",
        sa.Column("client_id", sa.String(128), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("redirect_uris", sa.Text, nullable=False),
        sa.Column("scopes", sa.Text, nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=True),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "node_authorization_codes",
        sa.Column("code_sha256", sa.String(64), primary_key=True),
        sa.Column("client_id", sa.String(128), nullable=False),
        sa.Column("redirect_uri", sa.Text, nullable=False),
        sa.Column("grant", sa.Text, nullable=False),
        sa.Column("code_challenge", sa.String(128), nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("used_at", sa.Float, nullable=True),
    )
    op.create_index(
        "ix_node_authorization_codes_expires_at", "node_authorization_codes", ["expires_at"]
    )
    op.create_table(
        "node_refresh_tokens",
        sa.Column("token_sha256", sa.String(64), primary_key=True),
        sa.Column("family", sa.String(64), nullable=False),
        sa.Column("client_id", sa.String(128), nullable=False),
        sa.Column("grant", sa.Text, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("revoked", sa.Boolean, nullable=False),
    )
    op.create_index("ix_node_refresh_tokens_family", "node_refresh_tokens", ["family"])
    op.create_index("ix_node_refresh_tokens_expires_at", "node_refresh_tokens", ["expires_at"])


def downgrade() -> None:
    op.drop_table("node_refresh_tokens")
    op.drop_table("node_authorization_codes")
    op.drop_table("node_smart_apps")
    op.drop_column("node_accounts", "fhir_user")
    op.drop_column("node_backend_clients", "jwks_url")
