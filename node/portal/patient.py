"""The patient's pages at the node that manages their care: today's plan (what to measure,
medications, tasks, the next visit, messages from the care team) and their trends. Every read
applies the compartment the access seam returns (``node.portal.signin.patient_access``): a
patient's session reaches only their own record, and has no handle to anyone else's."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

from node.portal.doctor import CATALOG
from node.portal.journey import load_journey
from node.portal.panel import search_all
from node.portal.signin import PREFIX, kit_of, patient_access, router
from node.store import FhirStore

__all__ = ["router"]


def _today(store: FhirStore, pid: str, compartment: str) -> dict[str, Any]:
    def find(rtype: str, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
        return search_all(store, rtype, [("patient", pid), *params], compartment=compartment)[0]

    tasks = [t for t in find("Task", []) if t.get("status") in ("requested", "ready", "accepted")]
    return {
        "plans": find("CarePlan", [("status", "active")]),
        "medications": find("MedicationRequest", [("status", "active")]),
        "tasks": [t for t in tasks if (t.get("owner") or {}).get("reference") == f"Patient/{pid}"],
        "appointments": sorted(
            (a for a in find("Appointment", []) if a.get("status") == "booked"),
            key=lambda a: str(a.get("start", "")),
        ),
        "messages": sorted(
            find("Communication", []), key=lambda c: str(c.get("sent", "")), reverse=True
        )[:20],
    }


@router.get(PREFIX + "/me")
async def my_day(request: Request) -> Response:
    access = patient_access(request, "CarePlan", "search")
    pid = str(access.compartment)
    store: FhirStore = request.app.state.store
    today = await run_in_threadpool(_today, store, pid, pid)
    settings = request.app.state.services.settings
    return kit_of(request).render(
        request, "me.html", app_title=settings.name, org_id=settings.org_id, **today
    )


@router.get(PREFIX + "/me/trends")
async def my_trends(request: Request) -> Response:
    access = patient_access(request, "Observation", "search")
    pid = str(access.compartment)
    store: FhirStore = request.app.state.store
    journey = await run_in_threadpool(load_journey, store, pid, CATALOG, compartment=pid)
    settings = request.app.state.services.settings
    return kit_of(request).render(
        request,
        "my_trends.html",
        app_title=settings.name,
        org_id=settings.org_id,
        charts=[(t, json.dumps(t.chart(journey.plan_marks))) for t in journey.trends],
    )
