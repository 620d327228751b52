"""Node exchange: processed inbound envelopes, outbound log, pseudonym index.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "exchange_inbound",
        sa.Column("envelope_id", sa.String(64), primary_key=True),
        sa.Column("sender", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("task_uid", sa.String(64), nullable=True),
        sa.Column("patient_id", sa.String(64), nullable=True),
        sa.Column("received_at", sa.Float, nullable=False),
    )
    op.create_table(
        "exchange_outbound",
        sa.Column("envelope_id", sa.String(64), primary_key=True),
        sa.Column("recipient", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("classes", sa.Text, nullable=False),
        sa.Column("task_uid", sa.String(64), nullable=True),
        sa.Column("patient_id", sa.String(64), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("sealed", sa.LargeBinary, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("sent_at", sa.Float, nullable=True),
    )
    op.create_table(
        "exchange_pseudonyms",
        sa.Column("pseudonym", sa.String(128), primary_key=True),
        sa.Column("patient_id", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("exchange_pseudonyms")
    op.drop_table("exchange_outbound")
    op.drop_table("exchange_inbound")
