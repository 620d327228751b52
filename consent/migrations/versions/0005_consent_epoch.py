"""consent registry: the consent epoch (moves with every consent written)

Revision ID: consent_0005
Revises: consent_0004
"""

import sqlalchemy as sa
from alembic import op

revision = "consent_0005"
down_revision = "consent_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "consent_epoch",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(table, [{"id": 1, "epoch": 0}])


def downgrade() -> None:
    op.drop_table("consent_epoch")
