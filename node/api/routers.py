"""Routers other areas add to the node app (exchange, care management, portals, …).

Add yours with one import and one append, e.g.::

    from node.exchange.routes import router as exchange_router
    EXTRA_ROUTERS.append(exchange_router)

Every route must authorise through ``node.auth.deps``: ``require_scope`` (whole-organisation
routes; refuses patient-context tokens) or ``require_access`` (routes that apply the patient
compartment it returns). ``tests/access/access_table.toml`` must declare who may call each
new route.
"""

from __future__ import annotations

from fastapi import APIRouter

__all__ = ["EXTRA_ROUTERS"]

EXTRA_ROUTERS: list[APIRouter] = []

from node.exchange.routes import router as exchange_router  # noqa: E402

EXTRA_ROUTERS.append(exchange_router)

from node.consent_link import router as consent_link_router  # noqa: E402

EXTRA_ROUTERS.append(consent_link_router)

from node.care.routes import router as care_router  # noqa: E402

EXTRA_ROUTERS.append(care_router)
