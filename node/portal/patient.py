"""The patient's pages at the node that manages their care: today's plan (what to measure,
medications, tasks, the next visit, messages from the care team) and their trends. Every read
applies the compartment the access seam returns (``node.portal.signin.patient_access``): a
patient's session reaches only their own record, and has no handle to anyone else's."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

from node.api.access import authorise_write
from node.portal.consent_words import (
    CLASSES,
    PURPOSE_WORDS,
    ConsentLine,
    grant_resource,
    narrowed,
    plain_words,
)
from node.portal.doctor import CATALOG
from node.portal.journey import load_journey
from node.portal.panel import search_all
from node.portal.registry_link import RegistryLink
from node.portal.signin import PREFIX, kit_of, patient_access, router
from node.store import FhirStore
from servicekit.outcome import BadRequest, Forbidden, NotFound, ServiceUnavailable

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


def _page(request: Request, template: str, **context: Any) -> Response:
    settings = request.app.state.services.settings
    return kit_of(request).render(
        request, template, app_title=settings.name, org_id=settings.org_id, **context
    )


async def _form(request: Request) -> dict[str, str]:
    form = await request.form()
    return {k: v.strip() for k, v in form.items() if isinstance(v, str)}


@router.get(PREFIX + "/me")
async def my_day(request: Request, notice: str = "") -> Response:
    access = patient_access(request, "CarePlan", "search")
    pid = str(access.compartment)
    store: FhirStore = request.app.state.store
    today = await run_in_threadpool(_today, store, pid, pid)
    return _page(request, "me.html", notice=notice, readings=READINGS, **today)


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


# -- record a reading -------------------------------------------------------------------------
UCUM = "http://unitsofmeasure.org"
# What a patient records at home: LOINC code, UCUM unit (the care measure catalog's units).
READINGS = {
    "weight": ("29463-7", "Body weight", "kg"),
    "glucose": ("15074-8", "Glucose [Moles/volume] in Blood", "mmol/L"),
}


def _reading(kind: str, form: dict[str, str], pid: str) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat()
    base: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": now,
    }

    def number(name: str) -> float:
        try:
            return float(form.get(name, "").replace(",", "."))
        except ValueError:
            raise BadRequest("enter the value as a number") from None

    if kind == "bp":
        return {
            **base,
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
            "component": [
                {
                    "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                    "valueQuantity": {
                        "value": number(name),
                        "unit": "mm[Hg]",
                        "system": UCUM,
                        "code": "mm[Hg]",
                    },
                }
                for code, name in (("8480-6", "systolic"), ("8462-4", "diastolic"))
            ],
        }
    if kind not in READINGS:
        raise BadRequest("unknown kind of reading")
    code, text, unit = READINGS[kind]
    return {
        **base,
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": text}]},
        "valueQuantity": {"value": number("value"), "unit": unit, "system": UCUM, "code": unit},
    }


@router.post(PREFIX + "/me/readings")
async def record_reading(request: Request) -> Response:
    """Record a home reading: the one write rule (``authorise_write``: in the patient's own
    compartment, the patient as author), then the store's one door (plausibility checked)."""
    access = patient_access(request, "Observation", "create")
    pid = str(access.compartment)
    form = await _form(request)
    store: FhirStore = request.app.state.store
    resource = authorise_write(store, access, _reading(form.get("kind", ""), form, pid))
    await run_in_threadpool(
        lambda: store.create(resource, writer=access.principal.writer)  # 400 if implausible
    )
    return kit_of(request).redirect(f"{PREFIX}/me?notice=recorded")


# -- my consents and who saw my data ------------------------------------------------------------
def _regional_token(request: Request) -> str | None:
    user = kit_of(request).session(request).user or {}
    return str(user["token"]) if user.get("regional") else None


def _registry(request: Request) -> RegistryLink:
    url = request.app.state.services.settings.consent.url
    if not url:
        raise ServiceUnavailable("this node has no consent registry")
    return RegistryLink(str(url))


def _organisations(request: Request) -> list[Any]:
    exchange = getattr(request.app.state, "exchange", None)
    if exchange is None:
        return []
    try:
        return [o for o in exchange.client.organisations() if not o.revoked]
    except Exception:  # the coordinator is down: the patient can still revoke
        return []


@router.get(PREFIX + "/me/consents")
async def my_consents(request: Request, notice: str = "") -> Response:
    patient_access(request, "Patient", "read")  # consents: the registry decides
    token = _regional_token(request)
    consents: list[tuple[str, list[ConsentLine]]] = []
    if token:
        found = await run_in_threadpool(_registry(request).consents, token)
        session = kit_of(request).session(request)
        consents = [
            (session.handle_for(f"Consent/{c['id']}"), plain_words(c))
            for c in found
            if c.get("status") == "active"
        ]
    orgs = await run_in_threadpool(_organisations, request)
    return _page(
        request,
        "my_consents.html",
        consents=consents,
        regional=bool(token),
        orgs={o.org_id: o.name for o in orgs},
        classes=CLASSES,
        purposes=PURPOSE_WORDS,
        notice=notice,
    )


def _until(form: dict[str, str]) -> datetime | None:
    if not form.get("until"):
        return None
    try:
        return datetime.fromisoformat(form["until"]).replace(tzinfo=UTC)
    except ValueError:
        raise BadRequest("the end date must be a date") from None


def _consent_id(request: Request, handle: str) -> str:
    reference = kit_of(request).session(request).resolve(handle)
    if reference is None or not reference.startswith("Consent/"):
        raise NotFound("unknown handle")
    return reference.split("/", 1)[1]


async def _form_lists(request: Request) -> tuple[dict[str, str], list[str]]:
    form = await request.form()
    single = {k: v.strip() for k, v in form.items() if isinstance(v, str)}
    classes = [v for v in form.getlist("classes") if isinstance(v, str) and v in CLASSES]
    return single, classes


def _need_token(request: Request) -> str:
    token = _regional_token(request)
    if token is None:
        raise Forbidden("sign in with your regional patient account to change consents")
    return token


@router.post(PREFIX + "/me/consents/grant")
async def grant(request: Request) -> Response:
    access = patient_access(request, "Patient", "read")  # the registry decides
    token = _need_token(request)
    form, classes = await _form_lists(request)
    if form.get("purpose") not in PURPOSE_WORDS or not form.get("org") or not classes:
        raise BadRequest("choose who, for what, and at least one kind of data")
    body = grant_resource(
        access.principal.subject, form["org"], form["purpose"], classes, _until(form)
    )
    await run_in_threadpool(_registry(request).grant, token, body)
    return kit_of(request).redirect(f"{PREFIX}/me/consents?notice=granted")


@router.post(PREFIX + "/me/consents/{handle}/narrow")
async def narrow(request: Request, handle: str) -> Response:
    patient_access(request, "Patient", "read")  # the registry decides
    token = _need_token(request)
    consent_id = _consent_id(request, handle)
    form, classes = await _form_lists(request)
    if not classes:
        raise BadRequest("keep at least one kind of data, or withdraw the consent")
    registry = _registry(request)
    current = await run_in_threadpool(registry.consent, token, consent_id)
    body = narrowed(current, classes, _until(form))
    await run_in_threadpool(registry.replace, token, consent_id, body)
    return kit_of(request).redirect(f"{PREFIX}/me/consents?notice=narrowed")


@router.post(PREFIX + "/me/consents/{handle}/revoke")
async def revoke(request: Request, handle: str) -> Response:
    patient_access(request, "Patient", "read")  # the registry decides
    token = _need_token(request)
    consent_id = _consent_id(request, handle)
    await run_in_threadpool(_registry(request).revoke, token, consent_id)
    return kit_of(request).redirect(f"{PREFIX}/me/consents?notice=revoked")


@router.get(PREFIX + "/me/disclosures")
async def my_disclosures(request: Request) -> Response:
    patient_access(request, "Patient", "read")  # consents: the registry decides
    token = _regional_token(request)
    items: list[dict[str, Any]] = []
    if token:
        items = await run_in_threadpool(_registry(request).disclosures, token)
        items.sort(key=lambda d: str(d.get("when", "")), reverse=True)
    return _page(
        request,
        "my_disclosures.html",
        disclosures=items,
        regional=bool(token),
        purposes_words=PURPOSE_WORDS,
    )
