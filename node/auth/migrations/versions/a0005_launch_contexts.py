"""EHR launch contexts (node/auth/ehr_launch.py): opaque, short-lived, single-use handles.

Revision ID: a0005
Revises: a0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "a0005"
down_revision = "a0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "node_launch_contexts",
        sa.Column("handle_sha256", sa.String(64), primary_key=True),
        sa.Column("client_id", sa.String(128), nullable=False),
        sa.Column("subject", sa.String(128), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("used_at", sa.Float, nullable=True),
    )
    op.create_index("ix_node_launch_contexts_expires_at", "node_launch_contexts", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_node_launch_contexts_expires_at", "node_launch_contexts")
    op.drop_table("node_launch_contexts")
