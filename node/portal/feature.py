"""The node's web pages as a node feature (``PORTAL``, listed in ``node/app.py``): the page
routes under ``/app``, their static files, and a startup hook that builds the pages' WebKit
(templates, translations, the in-process session store) in every worker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from node.feature import Feature, NodeServices
from node.portal import (
    app_launch,
    doctor,
    node_login,
    patient,
    patient_care,
    patient_medications,
)
from node.portal.signin import PREFIX, router
from servicekit.web import WebKit, static_router

__all__ = ["PORTAL", "portal_pages"]

HERE = Path(__file__).parent
# the four modules add their pages to the one router
assert doctor.router is router and patient.router is router and patient_care.router is router
assert patient_medications.router is router and app_launch.router is router


@asynccontextmanager
async def portal_pages(services: NodeServices, app: Any) -> AsyncIterator[None]:
    settings = services.settings
    node_login.register_client(services.auth, settings.public_url and str(settings.base_url))
    app.state.portal = WebKit(
        prefix=PREFIX,
        template_dirs=[HERE / "templates"],
        locale_dirs=[HERE / "locale"],
        idle_seconds=settings.portal.idle_seconds,
        # One cookie per organisation: nodes on one host never share (or overwrite) a session.
        cookie_name=f"ipjms_session_{settings.org_id}",
    )
    try:
        yield
    finally:
        app.state.portal = None


PORTAL = Feature(
    name="portal",
    routers=(router, static_router(PREFIX)),
    startup=(portal_pages,),
)
