"""The patient's medication check-ins (issue 16 over issue 15's API): today's medications —
the active MedicationRequests of the patient's plan — each with the doses checked in today and
a taken / missed form.

The page reads through the access seam (``node.portal.signin.patient_access``: the patient's
own compartment) and stores through ``node.patient.routes.record_check_in`` — the function
``POST /patient/medication-checkins`` calls: the same compartment check (another patient's
request → 404), the same MedicationAdministration, the same write rule. Medications are named
by opaque per-session handles, never by ids in URLs. "Today" is the UTC day of the server clock
(the dose time stored is the moment of the check-in, in UTC)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

from node.patient import routes as patient_api
from node.portal.panel import search_all
from node.portal.signin import PREFIX, kit_of, patient_access, router
from servicekit.outcome import BadRequest, NotFound

__all__ = ["router", "medication_name"]


def medication_name(request: dict[str, Any]) -> str:
    concept = request.get("medicationCodeableConcept") or {}
    if concept.get("text"):
        return str(concept["text"])
    codings = concept.get("coding") or [{}]
    return str(codings[0].get("display") or codings[0].get("code") or "")


def _today_list(request: Request, pid: str, compartment: str) -> list[tuple[str, dict[str, Any]]]:
    store = request.app.state.store
    session = kit_of(request).session(request)
    today = datetime.now(UTC).date().isoformat()
    wanted = [("patient", pid), ("status", "active")]
    meds, _ = search_all(store, "MedicationRequest", wanted, compartment=compartment)
    doses, _ = search_all(store, "MedicationAdministration", [("patient", pid)],
                          compartment=compartment)  # fmt: skip
    shown: list[tuple[str, dict[str, Any]]] = []
    for m in meds:
        ref = f"MedicationRequest/{m['id']}"
        today_doses: list[dict[str, Any]] = [
            {"taken": d.get("status") == "completed", "when": str(d["effectiveDateTime"])}
            for d in doses
            if (d.get("request") or {}).get("reference") == ref
            and str(d.get("effectiveDateTime", "")).startswith(today)
        ]
        dosage = " ".join(str(d.get("text", "")) for d in m.get("dosageInstruction") or [])
        shown.append(
            (
                session.handle_for(ref),
                {
                    "name": medication_name(m),
                    "dosage": dosage.strip(),
                    "doses": sorted(today_doses, key=lambda d: str(d["when"])),
                },
            )
        )
    return shown


@router.get(PREFIX + "/me/medications")
async def my_medications(request: Request, notice: str = "") -> Response:
    access = patient_access(request, "MedicationRequest", "search")
    pid = str(access.compartment)
    meds = await run_in_threadpool(_today_list, request, pid, pid)
    settings = request.app.state.services.settings
    return kit_of(request).render(
        request, "my_medications.html", app_title=settings.name, org_id=settings.org_id,
        medications=meds, notice=notice,
    )  # fmt: skip


@router.post(PREFIX + "/me/medications/{handle}/check-in")
async def check_in(request: Request, handle: str) -> Response:
    """One dose taken or missed, now, through ``routes.record_check_in`` (as ``POST
    /patient/medication-checkins``)."""
    access = patient_access(request, "MedicationAdministration", "create")
    reference = kit_of(request).session(request).resolve(handle)
    if reference is None or not reference.startswith("MedicationRequest/"):
        raise NotFound("unknown handle")
    form = await request.form()
    taken = {"taken": True, "missed": False}.get(str(form.get("dose", "")))
    if taken is None:
        raise BadRequest("choose taken or missed")
    when = datetime.now(UTC).replace(microsecond=0).isoformat()
    await run_in_threadpool(
        patient_api.record_check_in, request.app.state.services, access,
        str(access.compartment), reference.split("/", 1)[1], taken, when,
    )  # fmt: skip
    notice = "taken" if taken else "missed"
    return kit_of(request).redirect(f"{PREFIX}/me/medications?notice={notice}")
