"""The pseudonym store's input digests are keyed: HMAC-SHA256 under a store key derived from the
organisation's own signing key (``trust.pseudonymiser.store_key``), no longer a plain SHA-256 —
a stolen table could be brute-forced over a small identifier space offline (a 9-digit id space
in minutes), bypassing the authority's budget.

Entries stored before are keyed by the plain SHA-256 of the input: they would never be matched
again, and they are exactly what a thief could brute-force, so they are deleted (the schema is
unchanged). The node asks the authority again for each patient it meets, once, as after n0002.

Revision ID: n0003
Revises: n0002
"""

from __future__ import annotations

from alembic import op

revision = "n0003"
down_revision = "n0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DELETE FROM node_pseudonyms")


def downgrade() -> None:  # n0002's code would never match a keyed digest: empty, as after n0002
    op.execute("DELETE FROM node_pseudonyms")
