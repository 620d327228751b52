"""consent registry: the classes each envelope-bound decision permitted

A ``$recheck`` no longer hears the envelope's classes from the coordinator (they left the clear
header, issue 23): it decides again the classes the decision permitted when it was asked, and
permits only if every one of them still is. Questions stored before this revision get the
classes they asked for (a superset of what was permitted: fail closed).

Revision ID: consent_0006
Revises: consent_0005
"""

import sqlalchemy as sa
from alembic import op

revision = "consent_0006"
down_revision = "consent_0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "consent_envelope_questions",
        sa.Column("permitted", sa.Text, nullable=False, server_default="[]"),
    )
    op.execute("UPDATE consent_envelope_questions SET permitted = classes")


def downgrade() -> None:
    with op.batch_alter_table("consent_envelope_questions") as batch:
        batch.drop_column("permitted")
