"""consent registry: remembered organisation-assertion ids (replay protection)

Revision ID: consent_0002
Revises: consent_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "consent_0002"
down_revision = "consent_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "consent_assertion_jti",
        sa.Column("jti", sa.String(255), primary_key=True),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_index("ix_consent_assertion_jti_expires_at", "consent_assertion_jti", ["expires_at"])


def downgrade() -> None:
    op.drop_table("consent_assertion_jti")
