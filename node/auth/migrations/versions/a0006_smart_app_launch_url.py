"""SMART apps' launch URL (node/auth/smart_apps.py): where the doctor pages' "launch" button
sends the browser for an EHR launch (``?iss=…&launch=…``); NULL = the app is not launched from
the pages.

Revision ID: a0006
Revises: a0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "a0006"
down_revision = "a0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("node_smart_apps", sa.Column("launch_url", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("node_smart_apps") as batch:
        batch.drop_column("launch_url")
