"""The node's persistent pseudonym store (issue 23): pseudonyms by (kind, key version, SHA-256 of
the OPRF input), so a restarted node does not ask the authority again.

Revision ID: n0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "n0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "node_pseudonyms",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("key_version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("input_digest", sa.String(64), primary_key=True),
        sa.Column("pseudonym", sa.String(128), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("node_pseudonyms")
