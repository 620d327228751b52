"""consent registry: a bound id is an envelope's or a record-locator lookup's

Issue 23 for lookups: a node binds its decision to a fresh lookup id (``$decide`` with
``lookup``) and the coordinator has the registry decide it again by that id, the caller and the
patient pseudonym (``$recheck`` with ``lookup``) — it no longer hears a purpose or classes. Both
kinds of binding are kept in ``consent_envelope_questions``; ``bound`` says which, so a lookup's
decision is never re-checked as an envelope's and an envelope's never as a lookup's. Questions
stored before this revision were all bound by envelopes (``envelope``).

Revision ID: consent_0007
Revises: consent_0006
"""

import sqlalchemy as sa
from alembic import op

revision = "consent_0007"
down_revision = "consent_0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "consent_envelope_questions",
        sa.Column("bound", sa.String(8), nullable=False, server_default="envelope"),
    )


def downgrade() -> None:
    # Fail closed: without ``bound`` a lookup's binding would read as an envelope's, and an
    # older coordinator could have it re-checked as one. Lookup bindings go; nodes bind again.
    op.execute("DELETE FROM consent_envelope_questions WHERE bound = 'lookup'")
    with op.batch_alter_table("consent_envelope_questions") as batch:
        batch.drop_column("bound")
