"""Coordinator: the envelope queue and routing log keep no purpose, data classes or consent
reference — the clear envelope header no longer carries them (issue 23).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("envelopes") as batch:
        batch.drop_column("purpose")
        batch.drop_column("classes")
        batch.drop_column("consent_ref")
    with op.batch_alter_table("routing_log") as batch:
        batch.drop_column("purpose")


def downgrade() -> None:
    with op.batch_alter_table("routing_log") as batch:
        batch.add_column(sa.Column("purpose", sa.String(16), nullable=False, server_default=""))
    with op.batch_alter_table("envelopes") as batch:
        batch.add_column(sa.Column("purpose", sa.String(16), nullable=False, server_default=""))
        batch.add_column(sa.Column("classes", sa.Text, nullable=False, server_default="[]"))
        batch.add_column(
            sa.Column("consent_ref", sa.String(256), nullable=False, server_default="")
        )
