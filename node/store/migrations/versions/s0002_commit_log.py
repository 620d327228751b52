"""FHIR store: the commit log (commit events), its head row and the subscribers' positions.

Revision ID: s0002
Revises: s0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "s0002"
down_revision = "s0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fhir_commit_log",
        sa.Column("position", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("commit_seq", sa.BigInteger, nullable=False),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("resource_id", sa.String(64), nullable=False),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("interaction", sa.String(8), nullable=False),
        sa.Column("writer", sa.String(200), nullable=False),
        sa.Column("committed_at", sa.DateTime, nullable=False),
    )
    head = op.create_table(
        "fhir_commit_log_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("commit_seq", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(head, [{"id": 1, "position": 0, "commit_seq": 0}])
    op.create_table(
        "fhir_commit_subscriber",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    for name in ("fhir_commit_subscriber", "fhir_commit_log_head", "fhir_commit_log"):
        op.drop_table(name)
