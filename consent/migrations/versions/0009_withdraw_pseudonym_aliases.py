"""consent registry: pseudonym aliases withdrawn

``consent_0008`` added aliases that the enrolling node registered after an OPRF key rotation
(old pseudonym -> new). Review showed the registry cannot tell whether two pseudonyms belong to
one person, so any enrolling node could point another organisation's patient's new pseudonym at
a patient of its own and have that patient's consents and account apply (or, with a made-up
``v0.`` pseudonym, without any rotation). The route and every lookup through the table are
gone; the table goes with them.

Revision ID: consent_0009
Revises: consent_0008
"""

import sqlalchemy as sa
from alembic import op

revision = "consent_0009"
down_revision = "consent_0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_table("consent_pseudonym_aliases")


def downgrade() -> None:  # the table comes back empty: no alias is ever restored
    op.create_table(
        "consent_pseudonym_aliases",
        sa.Column("alias", sa.String(128), primary_key=True),
        sa.Column("canonical", sa.String(128), nullable=False, index=True),
        sa.Column("registered_by", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
