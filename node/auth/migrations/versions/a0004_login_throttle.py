"""The failed-login throttle for password sign-ins (trust.login_throttle).

Revision ID: a0004
Revises: a0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "a0004"
down_revision = "a0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "node_login_throttle",
        sa.Column("account_key", sa.String(64), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("locked_until", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("node_login_throttle")
