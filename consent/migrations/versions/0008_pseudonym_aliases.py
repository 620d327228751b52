"""consent registry: pseudonym aliases after an OPRF key rotation (issue 23)

A rotation of the pseudonymisation authority's key gives every patient a new pseudonym
(``v2.…`` instead of ``v1.…``); the registry keeps everything under the pseudonym the patient
enrolled with. The node that enrolled a patient tells the registry which new pseudonym is the
same person (``POST /pseudonym-aliases``); this table maps the alias to the canonical pseudonym
(the enrolled one), and every entry point resolves through it (``consent.aliases.canonical``).

Revision ID: consent_0008
Revises: consent_0007
"""

import sqlalchemy as sa
from alembic import op

revision = "consent_0008"
down_revision = "consent_0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "consent_pseudonym_aliases",
        sa.Column("alias", sa.String(128), primary_key=True),
        sa.Column("canonical", sa.String(128), nullable=False, index=True),
        sa.Column("registered_by", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("consent_pseudonym_aliases")
