"""Pseudonym → local Patient links of the region's patient sign-in.

Revision ID: p0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "p0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "node_patient_links",
        sa.Column("pseudonym", sa.String(128), primary_key=True),
        sa.Column("patient_id", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("node_patient_links")
