"""``/fhir/Consent``: a patient's own consents (grant, read, search, narrow, revoke).

Only patient tokens reach these routes (organisations get 403: they learn about consent only
through ``$decide``, the minimum necessary). A patient only ever sees or changes consents whose
``patient`` is their own pseudonym; someone else's consent id answers 404.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from consent.auth import Principal, require
from consent.fhir import PSEUDONYM_SYSTEM, from_fhir
from consent.http_io import fhir_response, read_json
from consent.store import ConsentStore, StoredConsent
from servicekit.openapi_bodies import fhir_body
from servicekit.outcome import BadRequest, Forbidden, NotFound
from trust import audit_events
from trust.audit_ledger import AuditLedger

__all__ = ["router"]

router = APIRouter()
PATIENT_CONSENT = require("patient/Consent.cruds", kind="patient")
_ETAG = re.compile(r'^(?:W/)?"(\d+)"$')
_SEARCH_PARAMS = {"patient", "status", "_count"}


def _store(request: Request) -> ConsentStore:
    return request.app.state.consent_store  # type: ignore[no-any-return]


def _ledger(request: Request) -> AuditLedger:
    return request.app.state.ledger  # type: ignore[no-any-return]


def _own(request: Request, consent_id: str, principal: Principal) -> StoredConsent:
    stored = _store(request).get(consent_id)
    if stored.record.patient != principal.patient:
        raise NotFound(f"Consent/{consent_id} not found")
    return stored


def _audit(request: Request, stored: StoredConsent, action: str, principal: Principal) -> None:
    event = audit_events.consent_change(
        patient_pseudonym=stored.record.patient,
        consent_id=stored.record.id,
        action=action,
        actor=principal.subject,
        observer=request.app.state.org_id,
    )
    _ledger(request).append(event, patient_pseudonym=stored.record.patient)


def _respond(stored: StoredConsent, status: int = 200) -> JSONResponse:
    rid, version = stored.record.id, stored.version
    headers = {"ETag": f'W/"{version}"', "Location": f"Consent/{rid}/_history/{version}"}
    return fhir_response(stored.resource(), status, headers)


@router.post("/fhir/Consent", openapi_extra=fhir_body("Consent"))
async def create_consent(
    request: Request, principal: Principal = Depends(PATIENT_CONSENT)
) -> JSONResponse:
    record = from_fhir(await read_json(request), record_id="new")
    if record.patient != principal.patient:
        raise Forbidden("a patient may only grant consent for themselves")
    stored = _store(request).create(record)
    _audit(request, stored, "C", principal)
    return _respond(stored, 201)


@router.get("/fhir/Consent/{consent_id}")
def read_consent(
    consent_id: str, request: Request, principal: Principal = Depends(PATIENT_CONSENT)
) -> JSONResponse:
    return _respond(_own(request, consent_id, principal))


@router.put("/fhir/Consent/{consent_id}", openapi_extra=fhir_body("Consent"))
async def update_consent(
    consent_id: str, request: Request, principal: Principal = Depends(PATIENT_CONSENT)
) -> JSONResponse:
    body = await read_json(request)
    if isinstance(body, dict) and body.get("id") not in (None, consent_id):
        raise BadRequest("Consent.id does not match the URL", expression=["Consent.id"])
    record = from_fhir(body, record_id=consent_id)
    if record.patient != principal.patient:
        raise Forbidden("a patient may only change their own consent")
    current = _own(request, consent_id, principal)
    if_match = None
    header = request.headers.get("if-match")
    if header:
        m = _ETAG.match(header.strip())
        if not m:
            raise BadRequest('If-Match must look like W/"<version>"')
        if_match = int(m.group(1))
    record = replace(record, date_time=record.date_time or current.record.date_time)
    stored = _store(request).update(consent_id, record, if_match=if_match)
    revoked = current.record.status == "active" and stored.record.status != "active"
    _audit(request, stored, "D" if revoked else "U", principal)
    return _respond(stored)


@router.post("/fhir/Consent/{consent_id}/$revoke")
def revoke_consent(
    consent_id: str, request: Request, principal: Principal = Depends(PATIENT_CONSENT)
) -> JSONResponse:
    current = _own(request, consent_id, principal)
    if current.record.status == "inactive":
        return _respond(current)
    stored = _store(request).update(
        consent_id, replace(current.record, status="inactive"), if_match=current.version
    )
    _audit(request, stored, "D", principal)
    return _respond(stored)


def _search_patient(value: str) -> str:
    if "|" in value:
        system, _, value = value.partition("|")
        if system != PSEUDONYM_SYSTEM:
            raise BadRequest(f"patient identifier system must be {PSEUDONYM_SYSTEM}")
    return value.removeprefix("Patient/")


@router.get("/fhir/Consent")
def search_consents(request: Request, principal: Principal = Depends(PATIENT_CONSENT)) -> Any:
    params = list(request.query_params.multi_items())
    for name, _ in params:
        if name not in _SEARCH_PARAMS:
            raise BadRequest(f"unknown search parameter {name!r}", expression=[name])
    query = dict(params)
    patient = _search_patient(query.get("patient", principal.patient or ""))
    if patient != principal.patient:
        raise Forbidden("a patient may only search their own consents")
    found = _store(request).for_patient(patient)
    if "status" in query:
        found = [s for s in found if s.record.status == query["status"]]
    if "_count" in query:
        if not query["_count"].isdigit():
            raise BadRequest("_count must be a non-negative integer", expression=["_count"])
        found = found[: int(query["_count"])]
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(found),
        "entry": [
            {
                "fullUrl": f"Consent/{s.record.id}",
                "resource": s.resource(),
                "search": {"mode": "match"},
            }
            for s in found
        ],
    }
    return fhir_response(bundle)
