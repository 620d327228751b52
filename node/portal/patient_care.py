"""The patient's care pages over issue 15's APIs: education (read, mark read), and more to come.

Each page acts through the very functions the ``/patient`` API routes use
(``node.patient.routes``): the same readings, the same rules, no checks written again here. The
access is the page seam's (``node.portal.signin.patient_access``: the patient's own compartment);
items are named by opaque per-session handles, never by ids in URLs."""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

from node.patient import routes as patient_api
from node.portal.signin import PREFIX, kit_of, patient_access, router
from servicekit.outcome import NotFound

__all__ = ["router"]


def _page(request: Request, template: str, **context: Any) -> Response:
    settings = request.app.state.services.settings
    return kit_of(request).render(
        request, template, app_title=settings.name, org_id=settings.org_id, **context
    )


def _resolve(request: Request, handle: str, kind: str) -> str:
    """The id behind a handle of this session (another session's handle → 404)."""
    reference = kit_of(request).session(request).resolve(handle)
    if reference is None or not reference.startswith(kind + "/"):
        raise NotFound("unknown handle")
    return reference.split("/", 1)[1]


# -- education ----------------------------------------------------------------------------------
@router.get(PREFIX + "/me/education")
async def my_education(request: Request, notice: str = "") -> Response:
    access = patient_access(request, "CarePlan", "read")  # as GET /patient/education
    services = request.app.state.services
    lang = kit_of(request).session(request).lang
    items = await run_in_threadpool(
        patient_api.education_items, services, access, str(access.compartment), lang
    )
    session = kit_of(request).session(request)
    shown = [(session.handle_for(f"Education/{i['id']}"), i) for i in items]
    return _page(request, "my_education.html", items=shown, notice=notice)


@router.post(PREFIX + "/me/education/{handle}/read")
async def read_education(request: Request, handle: str) -> Response:
    access = patient_access(request, "CarePlan", "read")  # as POST /patient/education/{id}/$read
    item_id = _resolve(request, handle, "Education")
    services = request.app.state.services
    await run_in_threadpool(patient_api.mark_read, services, access, item_id)
    return kit_of(request).redirect(f"{PREFIX}/me/education?notice=read")
