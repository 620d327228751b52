"""The patient's routes at a node (the ``PATIENT`` feature). For patient apps and the patient
web pages; every route authorises through ``node.auth.deps.require_access`` and writes through
``node/api/access.py: authorise_write`` (the patient's own compartment, the patient as author).

``POST /patient/readings[?patient=ID]`` — home readings: a FHIR Observation, a PHD-shaped
gateway transaction Bundle (Device + Observations) or Open mHealth data points (one or a list)
become the same vital-signs Observations (``node/patient/readings.py``), stored in one
transaction; a client ``identifier`` makes a re-send change nothing. ``patient`` is for
clinicians only (a patient token *is* the patient). Answers the transaction-response Bundle.

``GET /patient/questionnaires[?lang=en]``, ``GET /patient/questionnaires/{id}`` — the SDC
Questionnaires (PHQ-9, COPD CAT, HF daily diary; zh-CN with English translations).
``POST /patient/questionnaire-responses[?patient=ID]`` — a QuestionnaireResponse, scored by the
Questionnaire's ``calculatedExpression`` s and stored with the Observations its
``observationExtract`` items give (``node/patient/questionnaires.py``), in one transaction.

Bad input — an unknown kind, a wrong unit, an implausible value (``node/care/pathways/
measures.json``, each range with its source), a reading for someone else — is a 4xx
OperationOutcome and nothing of the upload is stored.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from node.api.access import authorise_write, ensure_in_compartment
from node.api.body import fhir_response
from node.auth.deps import Access, require_access
from node.care.definitions import load_catalog
from node.care.measures import MeasureCatalog, problems
from node.feature import NodeServices, node_services
from node.patient import booking, education, medication
from node.patient.questionnaires import complete, extract, load_questionnaires
from node.patient.readings import Upload, normalise
from node.patient.tables import education_read
from node.store import parse_bundle
from node.store.idempotency import derived_id
from node.store.validation import valid_id
from servicekit.openapi_bodies import json_body
from servicekit.outcome import BadRequest, Forbidden, NotFound, Unprocessable

__all__ = ["router"]

router = APIRouter(tags=["patient"])
_CATALOG: list[MeasureCatalog] = []


def _catalog() -> MeasureCatalog:
    if not _CATALOG:
        _CATALOG.append(load_catalog())
    return _CATALOG[0]


async def _read_json(request: Request) -> Any:
    raw = await request.body()  # size, encoding and depth were checked at the edge
    if not raw.strip():
        raise BadRequest("request body is empty")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None


def _patient_of(request: Request, access: Access) -> str:
    asked = request.query_params.get("patient")
    if access.compartment is not None:
        if asked not in (None, access.compartment):
            raise Forbidden("a patient uploads their own readings only")
        return access.compartment
    if not asked or not valid_id(asked):
        raise BadRequest("a clinician's upload names the patient: ?patient=<Patient id>")
    return asked


def _refuse_other_patient(request: Request, access: Access) -> None:
    """Every /patient/ route takes ``?patient``; a patient token naming another is 403."""
    asked = request.query_params.get("patient")
    if access.compartment is not None and asked not in (None, access.compartment):
        raise Forbidden("a patient token reaches its own records only")


def _identifier(res: dict[str, Any]) -> tuple[str, str] | None:
    for ident in res.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("system") and ident.get("value"):
            return str(ident["system"]), str(ident["value"])
    return None


def _device_key(key: str, device: dict[str, Any]) -> str:
    ident = _identifier(device)
    if ident is not None:
        return "|".join(ident)
    return str(device.get("serialNumber") or key)


def transaction_for(upload: Upload, patient: str, access: Access, store: Any) -> dict[str, Any]:
    """The transaction that stores the upload (pure but for reading what a re-send replaces):
    Devices and identified readings under ids derived from patient + identifier (``PUT``: a
    re-send changes nothing), others ``POST``; every resource through the one write rule."""
    if upload.devices:
        access.principal.compartment_for("Device", "update")  # Forbidden without Device.u
    entries: list[dict[str, Any]] = []
    device_ids: dict[str, str] = {}
    for key, device in upload.devices.items():
        did = derived_id("dev-", patient, _device_key(key, device))
        device_ids[key] = did
        body = {**device, "id": did, "patient": {"reference": f"Patient/{patient}"}}
        body = authorise_write(store, access, body) if access.compartment else body
        entries.append({"resource": body, "request": {"method": "PUT", "url": f"Device/{did}"}})
    for obs in upload.observations:
        body = dict(obs)
        body["subject"] = body.get("subject") or {"reference": f"Patient/{patient}"}
        ref = (body.get("device") or {}).get("reference")
        if ref in device_ids:
            body["device"] = {"reference": f"Device/{device_ids[ref]}"}
        elif ref is not None and not str(ref).startswith("Device/"):
            raise Unprocessable(f"Observation.device {ref!r} is not a Device of this upload")
        body = authorise_write(store, access, body) if access.compartment else body
        if (body.get("subject") or {}).get("reference") != f"Patient/{patient}":
            raise Forbidden("every reading of an upload is about the one patient it names")
        ident = _identifier(body)
        if ident is not None:
            rid = derived_id("obs-", patient, *ident)
            request = {"method": "PUT", "url": f"Observation/{rid}"}
            body["id"] = rid
        else:
            body.pop("id", None)
            request = {"method": "POST", "url": "Observation"}
        entries.append({"resource": body, "request": request})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


_UPLOAD = json_body({}, ())


@router.post("/patient/readings", openapi_extra=_UPLOAD)
async def upload_readings(
    request: Request,
    access: Access = Depends(require_access("Observation", "create")),
    services: NodeServices = Depends(node_services),
) -> JSONResponse:
    patient = _patient_of(request, access)
    upload = normalise(await _read_json(request))
    catalog = _catalog()
    found = [
        f"reading {i}: {msg}"
        for i, obs in enumerate(upload.observations)
        for _path, msg in problems(obs, catalog)
    ]
    if found:
        raise Unprocessable("; ".join(found))
    store = services.store
    bundle = await run_in_threadpool(transaction_for, upload, patient, access, store)
    parsed = parse_bundle(bundle, "transaction")
    response = await run_in_threadpool(store.transaction, parsed, writer=access.principal.writer)
    return fhir_response(response)


@router.get("/patient/questionnaires")
def list_questionnaires(
    request: Request,
    lang: str = "zh-CN",
    access: Access = Depends(require_access("QuestionnaireResponse", "create")),
) -> JSONResponse:
    """The questionnaires a patient can answer here, titled in ``lang`` (zh-CN or en)."""
    _refuse_other_patient(request, access)
    out = []
    for q in load_questionnaires().values():
        r = q.resource
        out.append({"id": r["id"], "url": q.url, "title": q.text({"text": r["title"],
                    "_text": r.get("_title")}, lang)})  # fmt: skip
    return JSONResponse({"questionnaires": out})


@router.get("/patient/questionnaires/{qid}")
def read_questionnaire(
    qid: str,
    request: Request,
    access: Access = Depends(require_access("QuestionnaireResponse", "create")),
) -> JSONResponse:
    """The SDC Questionnaire (Chinese text, English translations) to render and answer."""
    _refuse_other_patient(request, access)
    for q in load_questionnaires().values():
        if q.resource["id"] == qid:
            return fhir_response(q.resource)
    raise NotFound(f"no questionnaire {qid!r}")


@router.post(
    "/patient/questionnaire-responses",
    openapi_extra=json_body({"resourceType": {"type": "string"}}, ("resourceType",)),
)
async def answer_questionnaire(
    request: Request,
    access: Access = Depends(require_access("QuestionnaireResponse", "create")),
    services: NodeServices = Depends(node_services),
) -> JSONResponse:
    """A QuestionnaireResponse → scored (``calculatedExpression``), stored with its extracted
    Observations (SDC observation-based ``$extract``) in one transaction."""
    patient = _patient_of(request, access)
    body = await _read_json(request)
    if not isinstance(body, dict) or body.get("resourceType") != "QuestionnaireResponse":
        raise BadRequest("send a QuestionnaireResponse")
    _response, result = await run_in_threadpool(store_response, services, access, patient, body)
    return fhir_response(result)


def store_response(
    services: NodeServices, access: Access, patient: str, body: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Score a QuestionnaireResponse and store it with its extracted Observations in one
    transaction (the route's and the patient page's one path): (the response as stored, the
    transaction-response Bundle)."""
    q, response = complete(body)
    response.pop("id", None)
    response["authored"] = response.get("authored") or datetime.now(UTC).isoformat()
    response["subject"] = response.get("subject") or {"reference": f"Patient/{patient}"}
    store = services.store
    if access.compartment is not None:
        response = authorise_write(store, access, response)
    if (response.get("subject") or {}).get("reference") != f"Patient/{patient}":
        raise Forbidden("the response is about the one patient the upload names")
    ref = f"urn:uuid:{uuid.uuid4()}"
    observations = extract(q, response, patient, ref)
    found = [msg for o in observations for _p, msg in problems(o, _catalog())]
    if found:
        raise Unprocessable("; ".join(found))
    entries = [{"fullUrl": ref, "resource": response,
                "request": {"method": "POST", "url": "QuestionnaireResponse"}}]  # fmt: skip
    entries += [{"resource": o, "request": {"method": "POST", "url": "Observation"}}
                for o in observations]  # fmt: skip
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    result = store.transaction(parse_bundle(bundle, "transaction"), writer=access.principal.writer)
    return response, dict(result)


# --- follow-up booking (node/patient/booking.py) ---------------------------------------------
_SLOT_BODY = json_body({"slot": {"type": "string"}}, ("slot",))


async def _slot_of(request: Request) -> Any:
    body = await _read_json(request)
    if not isinstance(body, dict):
        raise BadRequest('body must be {"slot": "Slot/<id>"}')
    return body.get("slot")


@router.get("/patient/slots")
def list_free_slots(
    request: Request,
    start: str | None = None,
    access: Access = Depends(require_access("Appointment", "create")),
    services: NodeServices = Depends(node_services),
) -> JSONResponse:
    """Free slots the clinics published (from ``start``, default now)."""
    _refuse_other_patient(request, access)
    return JSONResponse({"slots": booking.free_slots(services.store, start=start)})


@router.post("/patient/appointments/$book", openapi_extra=_SLOT_BODY)
async def book_slot(
    request: Request,
    access: Access = Depends(require_access("Appointment", "create")),
    services: NodeServices = Depends(node_services),
) -> JSONResponse:
    """Book a free Slot: 200 with the transaction response; 409 when it is taken."""
    patient = _patient_of(request, access)
    slot = await _slot_of(request)
    result = await run_in_threadpool(
        booking.book, services.store, patient, slot, access.principal.writer
    )
    return fhir_response(result)


@router.post("/patient/appointments/{appointment_id}/$cancel")
async def cancel_appointment(
    appointment_id: str,
    request: Request,
    access: Access = Depends(require_access("Appointment", "update")),
    services: NodeServices = Depends(node_services),
) -> JSONResponse:
    patient = _patient_of(request, access)
    result = await run_in_threadpool(
        booking.cancel, services.store, patient, appointment_id, access.principal.writer
    )
    return fhir_response(result)


@router.post("/patient/appointments/{appointment_id}/$reschedule", openapi_extra=_SLOT_BODY)
async def reschedule_appointment(
    appointment_id: str,
    request: Request,
    access: Access = Depends(require_access("Appointment", "update")),
    services: NodeServices = Depends(node_services),
) -> JSONResponse:
    patient = _patient_of(request, access)
    slot = await _slot_of(request)
    result = await run_in_threadpool(
        booking.reschedule,
        services.store,
        patient,
        appointment_id,
        slot,
        access.principal.writer,
    )
    return fhir_response(result)


@router.get("/patient/reminders")
def list_reminders(
    request: Request,
    access: Access = Depends(require_access("Appointment", "read")),
    services: NodeServices = Depends(node_services),
) -> JSONResponse:
    """The patient's booked visits ahead, each with when to remind them (24 h before)."""
    patient = _patient_of(request, access)
    return JSONResponse({"reminders": booking.reminders(services.store, patient)})


# --- medication check-ins (node/patient/medication.py) ----------------------------------------


@router.post(
    "/patient/medication-checkins",
    openapi_extra=json_body(
        {
            "medicationRequest": {"type": "string"},
            "taken": {"type": "boolean"},
            "when": {"type": "string"},
        },
        ("medicationRequest", "taken", "when"),
    ),  # fmt: skip
)
async def medication_check_in(
    request: Request,
    access: Access = Depends(require_access("MedicationAdministration", "create")),
    services: NodeServices = Depends(node_services),
) -> JSONResponse:
    """A dose taken or missed, against one of the patient's MedicationRequests."""
    patient = _patient_of(request, access)
    body = await _read_json(request)
    if not isinstance(body, dict):
        raise BadRequest('body must be {"medicationRequest", "taken", "when"}')
    rid = str(body.get("medicationRequest") or "").removeprefix("MedicationRequest/")
    stored = await run_in_threadpool(
        record_check_in, services, access, patient, rid, body.get("taken"), body.get("when")
    )
    return fhir_response(stored, 201)


def record_check_in(
    services: NodeServices, access: Access, patient: str, rid: str, taken: Any, when: Any
) -> dict[str, Any]:
    """Store one check-in against the patient's MedicationRequest ``rid`` (another patient's →
    404) under the write rule; the stored MedicationAdministration. The route and the patient's
    medication page both call this."""
    if not valid_id(rid):
        raise BadRequest("medicationRequest must name a MedicationRequest")
    store = services.store
    ensure_in_compartment(store, "MedicationRequest", rid, patient)  # another's → 404
    administration = medication.check_in(store.read("MedicationRequest", rid), taken, when)
    administration = authorise_write(store, access, administration)
    return store.create(administration, writer=access.principal.writer).resource  # type: ignore[no-any-return]


@router.get("/patient/adherence")
def medication_adherence(
    request: Request,
    access: Access = Depends(require_access("MedicationAdministration", "read")),
    services: NodeServices = Depends(node_services),
) -> JSONResponse:
    """Doses taken / missed per MedicationRequest (the doctor names ``?patient=``)."""
    patient = _patient_of(request, access)
    found = services.store.search(
        "MedicationAdministration",
        [("patient", f"Patient/{patient}"), ("_count", "1000")],
        compartment_patient=access.compartment,
    )
    return JSONResponse({"patient": f"Patient/{patient}",
                         "adherence": medication.adherence(found.resources)})  # fmt: skip


# --- education (node/patient/education.py) ---------------------------------------------------


def _read_marks(services: NodeServices, patient: str) -> dict[str, str]:
    with services.engine.connect() as conn:
        rows = conn.execute(
            select(education_read.c.item_id, education_read.c.read_at).where(
                education_read.c.patient_id == patient
            )
        ).all()
    return {r.item_id: r.read_at.isoformat() for r in rows}


@router.get("/patient/education")
def list_education(
    request: Request,
    lang: str = "zh-CN",
    access: Access = Depends(require_access("CarePlan", "read")),
    services: NodeServices = Depends(node_services),
) -> JSONResponse:
    """The education items the patient's active CarePlans assign, in ``lang``, with read marks."""
    patient = _patient_of(request, access)
    items = education_items(services, access, patient, lang)
    return JSONResponse({"patient": f"Patient/{patient}", "items": items})


def education_items(
    services: NodeServices, access: Access, patient: str, lang: str
) -> list[dict[str, Any]]:
    """The items the patient's active CarePlans assign, in ``lang``, with read marks (the
    route's and the patient page's one reading)."""
    plans = services.store.search(
        "CarePlan",
        [("patient", f"Patient/{patient}"), ("status", "active"), ("_count", "100")],
        compartment_patient=access.compartment,
    ).resources
    return education.assigned(plans, _read_marks(services, patient), lang)


@router.post("/patient/education/{item_id}/$read")
def mark_education_read(
    item_id: str,
    request: Request,
    access: Access = Depends(require_access("CarePlan", "read")),
    services: NodeServices = Depends(node_services),
) -> JSONResponse:
    """The patient marks an item read (once; marking again keeps the first time)."""
    _refuse_other_patient(request, access)
    mark_read(services, access, item_id)
    return JSONResponse({"item": item_id, "read": True})


def mark_read(services: NodeServices, access: Access, item_id: str) -> None:
    """The patient's own act (the route's and the patient page's one rule): 403 for anyone
    else, 404 for an unknown item; marking again keeps the first time."""
    if access.compartment is None:
        raise Forbidden("only the patient marks their education read")
    if item_id not in education.item_ids():
        raise NotFound(f"no education item {item_id!r}")
    try:
        with services.engine.begin() as conn:
            conn.execute(
                insert(education_read).values(
                    patient_id=access.compartment, item_id=item_id, read_at=datetime.now(UTC)
                )
            )
    except IntegrityError:
        pass  # read before: the first time stands
