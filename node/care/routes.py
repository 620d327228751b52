"""Care management over HTTP: the alert stream (SSE, resumable), acknowledge / dismiss, doctor
enrolment — and, on import, the plausibility check of readings at the store's write door.

- ``GET /care/alerts/stream`` — Server-Sent Events for the signed-in practitioner (the
  Practitioner whose identifier is ``node-user|<username>``): one ``alert`` event per new or
  changed DetectedIssue addressed to them. Each event's ``id:`` is the store's commit position;
  a client that reconnects with ``Last-Event-ID`` gets every event after it, once (the commit log
  is durable and ordered, so nothing is missed across reconnects or node restarts). Without it
  the stream starts at the current head (only new alerts).
- ``POST /care/alerts/{id}/$acknowledge`` ``{"action": "…"}`` and ``…/$dismiss``
  ``{"reason": "…"}`` — the next DetectedIssue version with its ``mitigation``, and a
  ``Provenance`` naming who did it, in one transaction (the audit record; the commit log also
  names the writer).
- ``POST /care/enrol`` ``{"patient": "<id>", "pathway": "<key>"}`` — a doctor enrols a patient.

Importing this module (the node app does: ``CARE`` in node/care/lifecycle.py) adds the care
measure catalog's check to the store's validation in every worker process: an Observation of a
catalogued measure with a non-UCUM unit or an implausible value is a 400 OperationOutcome
wherever it comes from (REST, transaction, feeds), whether or not the care worker runs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from node.api.body import fhir_response
from node.auth.deps import Principal, require_scope
from node.care.alerts import AlertStateError, acknowledge, dismiss, recipient_of
from node.care.apply import iso
from node.care.definitions import load_catalog
from node.care.measures import MeasureCatalog, problems
from node.care.records import practitioner_for_user
from node.store import FhirStore
from node.store.validation import EXTRA_CHECKS
from servicekit.outcome import BadRequest, Forbidden, NotFound

__all__ = [
    "router",
    "register_reading_checks",
    "POLL_SECONDS",
    "alert_stream",
    "close_alert",
    "enrol_patient",
]

router = APIRouter(tags=["care"])
POLL_SECONDS = 0.1
KEEPALIVE_SECONDS = 15.0


def register_reading_checks(catalog: MeasureCatalog) -> None:
    """Refuse readings with a non-UCUM unit or an implausible value at the write door (400)."""

    def readings_check(resource: dict[str, Any]) -> list[tuple[str, str]]:
        return problems(resource, catalog)

    readings_check.__qualname__ = "care_readings_check"
    if not any(getattr(c, "__qualname__", "") == "care_readings_check" for c in EXTRA_CHECKS):
        EXTRA_CHECKS.append(readings_check)


register_reading_checks(load_catalog())


def _store(request: Request) -> FhirStore:
    return request.app.state.store  # type: ignore[no-any-return]


def _clinician(principal: Principal) -> None:
    if principal.role not in ("doctor", "nurse"):
        raise Forbidden("care alerts are for doctors and nurses")


def _practitioner(store: FhirStore, principal: Principal) -> str:
    who = practitioner_for_user(store, principal.subject)
    if who is None:
        raise Forbidden("this account has no Practitioner (identifier node-user|<username>)")
    return who


def _position(request: Request) -> int | None:
    raw = request.headers.get("last-event-id") or request.query_params.get("since")
    if raw is None:
        return None
    if not raw.isdigit():
        raise BadRequest("Last-Event-ID must be a stream position (a non-negative integer)")
    return int(raw)


@router.get("/care/alerts/stream")
async def alert_stream(
    request: Request, principal: Principal = Depends(require_scope("DetectedIssue", "search"))
) -> StreamingResponse:
    _clinician(principal)
    store = _store(request)
    me = await run_in_threadpool(_practitioner, store, principal)
    start = _position(request)
    if start is None:
        start = await run_in_threadpool(store.events.head)

    async def events() -> AsyncIterator[bytes]:
        position, idle = start, 0.0
        yield b": care alert stream\n\n"
        while not await request.is_disconnected():
            batch = await run_in_threadpool(store.events.read_since, position, 500)
            for e in batch:
                position = e.position
                if e.resource_type != "DetectedIssue" or e.interaction == "delete":
                    continue
                issue = await run_in_threadpool(
                    store.vread, "DetectedIssue", e.resource_id, e.version_id
                )
                if recipient_of(issue) != me:
                    continue
                data = json.dumps(issue, separators=(",", ":"))
                yield f"id: {e.position}\nevent: alert\ndata: {data}\n\n".encode()
                idle = 0.0
            if not batch:
                await asyncio.sleep(POLL_SECONDS)
                idle += POLL_SECONDS
                if idle >= KEEPALIVE_SECONDS:
                    idle = 0.0
                    yield b": keep-alive\n\n"

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


# How an alert is closed: operation → (what it records, the API body's field for its text).
CLOSE_ACTIONS = {"acknowledge": (acknowledge, "action"), "dismiss": (dismiss, "reason")}


def close_alert(
    store: FhirStore, principal: Principal, rid: str, verb: str, text: Any
) -> dict[str, Any]:
    """Acknowledge (``verb`` "acknowledge", ``text`` the action) or dismiss (``text`` the
    reason) an open alert: its next version and a Provenance in one transaction (the API's
    and the doctor's pages' one way to close an alert)."""
    if verb not in CLOSE_ACTIONS:
        raise NotFound(f"no alert operation ${verb}")
    record = CLOSE_ACTIONS[verb][0]
    _clinician(principal)
    who = _practitioner(store, principal)
    issue = store.read("DetectedIssue", rid)
    if recipient_of(issue) not in (who, None) and principal.role != "doctor":
        raise Forbidden("this alert is addressed to another practitioner")
    now = datetime.now(UTC)
    try:
        body = record(issue, str(text or ""), who, now)
    except AlertStateError as exc:
        raise BadRequest(str(exc)) from None
    version = issue["meta"]["versionId"]
    provenance = {
        "resourceType": "Provenance",
        "target": [{"reference": f"DetectedIssue/{rid}"}],
        "recorded": iso(now),
        "activity": {"text": f"care alert {verb}d"},
        "agent": [{"who": {"reference": who}}],
    }
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": body,
                "request": {
                    "method": "PUT",
                    "url": f"DetectedIssue/{rid}",
                    "ifMatch": f'W/"{version}"',
                },
            },
            {"resource": provenance, "request": {"method": "POST", "url": "Provenance"}},
        ],
    }
    store.transaction(bundle, writer=f"{principal.role}:{principal.subject}")
    return store.read("DetectedIssue", rid)


def _close_route(verb: str) -> None:
    """``POST /care/alerts/{rid}/$<verb>`` ``{"<field>": "…"}`` (CLOSE_ACTIONS): one handler
    for both operations, two routes (each its own line in the access table and the OpenAPI)."""
    field = CLOSE_ACTIONS[verb][1]

    async def close(
        rid: str,
        request: Request,
        principal: Principal = Depends(require_scope("DetectedIssue", "update")),
    ) -> Any:
        _clinician(principal)
        body = await _json(request)
        issue = await run_in_threadpool(
            close_alert, _store(request), principal, rid, verb, body.get(field)
        )
        return fhir_response(issue)

    router.post(f"/care/alerts/{{rid}}/${verb}", name=f"{verb}_alert")(close)


for _verb in CLOSE_ACTIONS:
    _close_route(_verb)


@router.post("/care/enrol")
async def enrol(
    request: Request, principal: Principal = Depends(require_scope("CarePlan", "create"))
) -> Any:
    _clinician(principal)
    body = await _json(request)
    made = await run_in_threadpool(
        enrol_patient,
        request.app.state,
        principal,
        str(body.get("patient", "")),
        str(body.get("pathway", "")),
    )
    return fhir_response({"resourceType": "Parameters", "parameter": [
        {"name": "enrolled", "valueString": key} for key in made
    ]})  # fmt: skip


def enrol_patient(state: Any, principal: Principal, patient_id: str, pathway_key: str) -> list[str]:
    """Enrol ``Patient/<patient_id>`` on a pathway through the care worker (the API's and the
    doctor's pages' one way); the keys of the pathways enrolled."""
    _clinician(principal)
    worker = getattr(state, "care_worker", None)
    if worker is None:
        raise NotFound("care management is not running on this node")
    pathway = worker.definitions.by_key(pathway_key)
    if pathway is None:
        keys = ", ".join(p.key for p in worker.definitions.pathways)
        raise BadRequest(f"unknown pathway {pathway_key!r} (one of {keys})")
    who = _practitioner(state.store, principal)
    code = pathway.enrolment[0]
    condition = {
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"code": "active"}]},
        "code": {"coding": [{"system": code[0], "code": code[1]}]},
        "subject": {"reference": f"Patient/{patient_id}"},
    }
    return list(worker.enrol(condition, datetime.now(UTC), who))
