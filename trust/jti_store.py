"""``jti`` replay protection kept in a service's own database.

A one-time assertion's ``jti`` is remembered until the end of the window in which the assertion
would still be accepted (``exp`` plus the verifier's leeway, see :class:`trust.tokens.
TokenVerifier`), in a table of the service's database: a replay is refused when it reaches
another worker process, and after a restart. The first insert wins (primary key), so two
concurrent uses of one assertion cannot both pass, on SQLite and on PostgreSQL alike.

Each service declares the table in its own schema with :func:`jti_table` and creates it with an
Alembic migration (node: ``node_assertion_jti``; consent registry: ``consent_assertion_jti``;
coordinator: ``coordinator_assertion_jti``).
"""

from __future__ import annotations

import time

from sqlalchemy import Column, Engine, Float, MetaData, String, Table, delete, insert
from sqlalchemy.exc import IntegrityError

from trust.tokens import ReplayCache, TokenError

__all__ = ["DbReplayCache", "jti_table", "MAX_JTI_LENGTH"]

MAX_JTI_LENGTH = 255
# Rows whose window closed this long ago are swept on the next insert.
_SWEEP_AFTER = 60.0


def jti_table(name: str, metadata: MetaData) -> Table:
    """The table a :class:`DbReplayCache` writes to: ``jti`` (primary key) and the time until
    which it is remembered (indexed, for the sweep)."""
    return Table(
        name,
        metadata,
        Column("jti", String(MAX_JTI_LENGTH), primary_key=True),
        Column("expires_at", Float, nullable=False, index=True),
    )


class DbReplayCache(ReplayCache):
    def __init__(self, engine: Engine, table: Table) -> None:
        super().__init__()
        self.engine = engine
        self.table = table

    def check_and_remember(self, jti: str, remember_until: float) -> None:
        if not jti or len(jti) > MAX_JTI_LENGTH:
            raise TokenError("token jti is missing or too long")
        now = time.time()
        table = self.table
        try:
            with self.engine.begin() as conn:
                conn.execute(delete(table).where(table.c.expires_at < now - _SWEEP_AFTER))
                conn.execute(insert(table).values(jti=jti, expires_at=remember_until))
        except IntegrityError:
            raise TokenError("token replayed (jti already used)") from None
