"""Seen client-assertion ids (replay protection shared by all workers).

Revision ID: a0002
Revises: a0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "a0002"
down_revision = "a0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "node_assertion_jti",
        sa.Column("jti", sa.String(255), primary_key=True),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_index("ix_node_assertion_jti_expires_at", "node_assertion_jti", ["expires_at"])


def downgrade() -> None:
    op.drop_table("node_assertion_jti")
