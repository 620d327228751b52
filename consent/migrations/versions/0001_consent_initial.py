"""consent registry: consents, patients, enrolment codes

Revision ID: consent_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "consent_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "consent_resources",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("patient", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_consent_resources_patient", "consent_resources", ["patient"])
    op.create_table(
        "consent_patients",
        sa.Column("pseudonym", sa.String(128), primary_key=True),
        sa.Column("handle", sa.String(32), nullable=False, unique=True),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("enrolled_by", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "consent_enrolment_codes",
        sa.Column("code_hash", sa.String(64), primary_key=True),
        sa.Column("pseudonym", sa.String(128), nullable=False),
        sa.Column("issued_by", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(
        "ix_consent_enrolment_codes_pseudonym", "consent_enrolment_codes", ["pseudonym"]
    )


def downgrade() -> None:
    op.drop_table("consent_enrolment_codes")
    op.drop_table("consent_patients")
    op.drop_table("consent_resources")
