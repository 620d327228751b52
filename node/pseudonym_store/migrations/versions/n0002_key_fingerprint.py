"""The pseudonym store keyed by the authority's key fingerprint too: (kind, key version, key
fingerprint, SHA-256 of the OPRF input). A version number alone does not name a key — an
authority whose key folder was lost makes a new ``v1`` — so an entry is used only under the key
that made it.

Entries stored before have no fingerprint: which key made them cannot be told, so they are
deleted (the table is re-created empty); the node asks the authority again for each patient it
meets, once, as after a rotation.

Revision ID: n0002
Revises: n0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "n0002"
down_revision = "n0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_table("node_pseudonyms")
    op.create_table(
        "node_pseudonyms",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("key_version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("key_fingerprint", sa.String(64), primary_key=True),
        sa.Column("input_digest", sa.String(64), primary_key=True),
        sa.Column("pseudonym", sa.String(128), nullable=False),
    )


def downgrade() -> None:  # back to n0001's shape, empty (its entries could not be trusted)
    op.drop_table("node_pseudonyms")
    op.create_table(
        "node_pseudonyms",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("key_version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("input_digest", sa.String(64), primary_key=True),
        sa.Column("pseudonym", sa.String(128), nullable=False),
    )
