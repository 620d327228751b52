"""Coordinator: directory, record locator, envelope queue, routing log.

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
        "organisations",
        sa.Column("org_id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("endpoints", sa.Text, nullable=False),
        sa.Column("encryption_certificate", sa.LargeBinary, nullable=False),
        sa.Column("signing_certificate", sa.LargeBinary, nullable=False),
        sa.Column("cert_fingerprints", sa.Text, nullable=False),
        sa.Column("revoked", sa.Boolean, nullable=False),
        sa.Column("registered_at", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=True),
    )
    op.create_table(
        "locator",
        sa.Column("patient_pseudonym", sa.String(128), primary_key=True),
        sa.Column("org_id", sa.String(64), primary_key=True),
        sa.Column("published_at", sa.Float, nullable=False),
    )
    op.create_table(
        "envelopes",
        sa.Column("envelope_id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("sender", sa.String(64), nullable=False),
        sa.Column("recipient", sa.String(64), nullable=False),
        sa.Column("patient_pseudonym", sa.String(128), nullable=False),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("classes", sa.Text, nullable=False),
        sa.Column("consent_ref", sa.String(256), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.Column("sealed", sa.LargeBinary, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_until", sa.Float, nullable=True),
        sa.Column("accepted_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index(
        "ix_envelopes_recipient_state", "envelopes", ["recipient", "state", "accepted_at"]
    )
    op.create_index("ix_envelopes_sender_accepted", "envelopes", ["sender", "accepted_at"])
    op.create_table(
        "routing_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("envelope_id", sa.String(64), nullable=False),
        sa.Column("sender", sa.String(64), nullable=False),
        sa.Column("recipient", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )
    op.create_index("ix_routing_log_decision_at", "routing_log", ["decision", "at"])


def downgrade() -> None:
    op.drop_table("routing_log")
    op.drop_table("envelopes")
    op.drop_table("locator")
    op.drop_table("organisations")
