"""Replay protection for client assertions, kept in the node database (``node_assertion_jti``).

A ``jti`` is accepted once for its whole accepted window (exp + leeway); remembering it in the
database (rather than in process memory) catches a replay sent to another worker process or
after a restart. The mechanism is :class:`trust.jti_store.DbReplayCache`, shared with the
consent registry and the coordinator.
"""

from __future__ import annotations

from sqlalchemy import Engine

from node.auth.tables import assertion_jtis
from trust.jti_store import DbReplayCache as _DbReplayCache

__all__ = ["DbReplayCache"]


class DbReplayCache(_DbReplayCache):
    def __init__(self, engine: Engine) -> None:
        super().__init__(engine, assertion_jtis)
