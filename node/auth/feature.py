"""Node accounts and tokens as a node feature: ``POST /auth/token``, ``POST /auth/accounts``,
SMART discovery and the authorization-code sign-in pages (``/auth/authorize``), and the
account/backend-client/app/code/refresh-token/replay tables (own Alembic version table)."""

from __future__ import annotations

from node.auth.authorize_routes import router as launch_router
from node.auth.routes import router
from node.feature import Feature
from node.schemas import AUTH_MIGRATIONS

__all__ = ["AUTH"]

AUTH = Feature(name="auth", routers=(launch_router, router), migrations=(AUTH_MIGRATIONS,))
