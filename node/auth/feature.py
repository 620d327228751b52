"""Node accounts and tokens as a node feature: ``POST /auth/token``, ``POST /auth/accounts``,
and the account/backend-client/replay tables (own Alembic version table)."""

from __future__ import annotations

from node.auth.accounts import MIGRATIONS_DIR
from node.auth.routes import router
from node.feature import Feature

__all__ = ["AUTH"]

AUTH = Feature(name="auth", routers=(router,), migrations=(MIGRATIONS_DIR,))
