"""consent registry: the question each envelope-bound decision answered

Revision ID: consent_0004
Revises: consent_0003
"""

import sqlalchemy as sa
from alembic import op

revision = "consent_0004"
down_revision = "consent_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "consent_envelope_questions",
        sa.Column("envelope_id", sa.String(36), primary_key=True),
        sa.Column("patient", sa.String(128), nullable=False),
        sa.Column("requester", sa.String(64), nullable=False),
        sa.Column("recipient", sa.String(64), nullable=False),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("classes", sa.Text, nullable=False),
        sa.Column("break_glass", sa.Boolean, nullable=False),
        sa.Column("asked_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_consent_envelope_questions_asked_at", "consent_envelope_questions", ["asked_at"]
    )


def downgrade() -> None:
    op.drop_table("consent_envelope_questions")
