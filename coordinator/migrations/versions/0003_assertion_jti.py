"""Remembered organisation-assertion ids (replay protection of the HTTP API).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "coordinator_assertion_jti",
        sa.Column("jti", sa.String(255), primary_key=True),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_index(
        "ix_coordinator_assertion_jti_expires_at", "coordinator_assertion_jti", ["expires_at"]
    )


def downgrade() -> None:
    op.drop_table("coordinator_assertion_jti")
