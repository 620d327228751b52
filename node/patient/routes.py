"""The patient's routes at a node (the ``PATIENT`` feature). For patient apps and the patient
web pages; every route authorises through ``node.auth.deps.require_access`` and writes through
``node/api/access.py: authorise_write`` (the patient's own compartment, the patient as author).

``POST /patient/readings[?patient=ID]`` — home readings: a FHIR Observation, a PHD-shaped
gateway transaction Bundle (Device + Observations) or Open mHealth data points (one or a list)
become the same vital-signs Observations (``node/patient/readings.py``), stored in one
transaction; a client ``identifier`` makes a re-send change nothing. ``patient`` is for
clinicians only (a patient token *is* the patient). Answers the transaction-response Bundle.

Bad input — an unknown kind, a wrong unit, an implausible value (``node/care/pathways/
measures.json``, each range with its source), a reading for someone else — is a 4xx
OperationOutcome and nothing of the upload is stored.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from node.api.access import authorise_write
from node.api.body import fhir_response
from node.auth.deps import Access, require_access
from node.care.definitions import load_catalog
from node.care.measures import MeasureCatalog, problems
from node.feature import NodeServices, node_services
from node.patient.readings import Upload, normalise
from node.store import parse_bundle
from node.store.idempotency import derived_id
from node.store.validation import valid_id
from servicekit.openapi_bodies import json_body
from servicekit.outcome import BadRequest, Forbidden, Unprocessable

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
