"""Replay protection for client assertions, kept in the node database.

A ``jti`` is accepted once; remembering it in the database (rather than in process memory)
catches a replay sent to another worker process or after a restart.
"""

from __future__ import annotations

import time

from sqlalchemy import Engine, delete, insert
from sqlalchemy.exc import IntegrityError

from node.auth.tables import assertion_jtis
from trust.tokens import ReplayCache, TokenError

__all__ = ["DbReplayCache"]


class DbReplayCache(ReplayCache):
    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine

    def check_and_remember(self, jti: str, expires_at: float) -> None:
        now = time.time()
        try:
            with self.engine.begin() as conn:
                conn.execute(delete(assertion_jtis).where(assertion_jtis.c.expires_at < now - 60))
                conn.execute(insert(assertion_jtis).values(jti=jti[:255], expires_at=expires_at))
        except IntegrityError:
            raise TokenError("token replayed (jti already used)") from None
