"""consent registry: the classes each envelope-bound decision permitted

A ``$recheck`` no longer hears the envelope's classes from the coordinator (they left the clear
header, issue 23): it decides again the classes the decision permitted when it was asked, and
permits only if every one of them still is. Questions stored before this revision get
``permitted = []`` (fail closed): revision 0005 did not keep whether a question was permitted, and
copying the classes asked would let a question that was *denied* permit once a later consent
exists. A ``$recheck`` of such a question denies ("permitted nothing"): an envelope in flight at
the upgrade is refused at delivery (dead-lettered) and its sender sends it again with a new
decision.

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
    # no backfill: the server default [] stands for every old question (see above)


def downgrade() -> None:
    with op.batch_alter_table("consent_envelope_questions") as batch:
        batch.drop_column("permitted")
