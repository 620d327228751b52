"""The pseudonym store names the store key its entries are under: a format row
(``node_pseudonym_store_format``: format and a check value of the store key — an HMAC of a
constant, which names the key without revealing it), as the SuperNode's file has (``store_format``,
``trust.pseudonym_store``). The node compares it with its own store key at start and deletes every
entry of another one: re-issuing the organisation's signing key changes the store key, and the
entries stored under the old one would otherwise stay, never matched again.

The row is made with an empty check, which names no key: entries stored before this revision
cannot be told apart by key, so the node's next start deletes them (as n0002 and n0003 did, it
asks the authority again for each patient it meets, once). This migration deletes nothing itself:
it runs without the organisation's key.

Revision ID: n0004
Revises: n0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "n0004"
down_revision = "n0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    marker = op.create_table(
        "node_pseudonym_store_format",
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("key_check", sa.String(64), nullable=False),
    )
    op.bulk_insert(marker, [{"format": "hmac-sha256-v1", "key_check": ""}])


def downgrade() -> None:  # n0003's code keeps the entries, keyed as before, without the row
    op.drop_table("node_pseudonym_store_format")
