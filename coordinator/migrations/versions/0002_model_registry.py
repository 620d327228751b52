"""Model registry: federated models with their model cards (coordinator/model_registry).

Coordinators that ran the registry before this revision already have ``fl_models`` (the registry
used to create it itself, with the same columns); there the table and its rows are kept and only
a missing index is added.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLE = "fl_models"
INDEX = "ix_fl_models_task"


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table(TABLE):
        op.create_table(
            TABLE,
            sa.Column("id", sa.String(40), primary_key=True),
            sa.Column("task", sa.String(64), nullable=False),
            sa.Column("feature_spec", sa.String(64), nullable=False),
            sa.Column("published", sa.Boolean, nullable=False),
            sa.Column("created_at", sa.Float, nullable=False),
            sa.Column("created_by", sa.String(128), nullable=False),
            sa.Column("card", sa.Text, nullable=False),
            sa.Column("weights", sa.LargeBinary, nullable=False),
        )
    elif {i["name"] for i in inspector.get_indexes(TABLE)} >= {INDEX}:
        return
    op.create_index(INDEX, TABLE, ["task"])


def downgrade() -> None:
    op.drop_index(INDEX, table_name=TABLE)
    op.drop_table(TABLE)
