"""consent registry: OpenID Connect authorization codes and the failed-login throttle

Revision ID: consent_0003
Revises: consent_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "consent_0003"
down_revision = "consent_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "consent_oidc_codes",
        sa.Column("code_hash", sa.String(64), primary_key=True),
        sa.Column("pseudonym", sa.String(128), nullable=False),
        sa.Column("client_id", sa.String(128), nullable=False),
        sa.Column("redirect_uri", sa.Text, nullable=False),
        sa.Column("code_challenge", sa.String(64), nullable=False),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("nonce", sa.String(256), nullable=True),
        sa.Column("auth_time", sa.Integer, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_consent_oidc_codes_expires_at", "consent_oidc_codes", ["expires_at"])
    op.create_table(
        "consent_login_throttle",
        sa.Column("account_key", sa.String(64), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("locked_until", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("consent_login_throttle")
    op.drop_table("consent_oidc_codes")
