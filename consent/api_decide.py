"""``POST /fhir/Consent/$decide`` and ``POST /disclosures`` (organisation tokens)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from consent.auth import Principal, require
from consent.decision_token import DecisionTokenError, verify_decision_token
from consent.decisions import DecisionService
from consent.disclosures import report_disclosure
from consent.http_io import fhir_response, json_response, read_json
from consent.model import check_classes, check_org_id, check_pseudonym, check_purpose
from consent.parameters import (
    LookupRecheckInput,
    decision_parameters,
    parse_decide,
    parse_recheck,
)
from servicekit.openapi_bodies import fhir_body, json_body
from servicekit.outcome import BadRequest

__all__ = ["router"]

router = APIRouter()
DECIDE = require("system/Consent.decide", kind="org")
REPORT = require("system/Disclosure.c", kind="org")


_S = {"type": "string"}
_PARAMETERS = fhir_body(
    "Parameters",
    {
        "parameter": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": _S, "valueString": _S, "valueCode": _S},
            },
        }
    },
)
_DISCLOSURE = json_body(
    {
        "patient": _S,
        "recipient": _S,
        "purpose": _S,
        "classes": {"type": "array", "items": _S},
        "envelope_id": _S,
        "decision_token": _S,
        "user": _S,
    },
    ("patient", "recipient", "purpose", "classes"),
)


@router.post("/fhir/Consent/$decide", openapi_extra=_PARAMETERS)
async def decide(request: Request, principal: Principal = Depends(DECIDE)) -> JSONResponse:
    inp = parse_decide(await read_json(request))
    service: DecisionService = request.app.state.decisions
    issued = service.decide(inp, principal)
    d = issued.decision
    data_period = None
    if d.data_period is not None:
        data_period = {
            k: v.isoformat().replace("+00:00", "Z")
            for k, v in (("start", d.data_period.start), ("end", d.data_period.end))
            if v is not None
        }
    return fhir_response(
        decision_parameters(
            permit=d.permit,
            classes=d.classes,
            refused=d.refused_classes,
            consent_ids=d.consent_ids,
            reason=d.reason,
            break_glass=d.break_glass,
            decision_id=issued.decision_id,
            expires_at=issued.expires_at,
            token=issued.token,
            data_period=data_period,
            patient=issued.patient or None,
        )
    )


@router.post("/fhir/Consent/$recheck", openapi_extra=_PARAMETERS)
async def recheck(request: Request, principal: Principal = Depends(DECIDE)) -> JSONResponse:
    """Decide again, by envelope id, the question an envelope-bound decision answered (the
    coordinator before routing and at delivery). The answer names no patient, no purpose, no
    class and no consent: ``decision`` (permit|deny), ``reason``, ``break-glass`` and, when it
    may be reused while no consent is written, ``epoch``; 404 when no decision was asked for the
    envelope. With ``lookup``, ``sender`` and ``patient`` instead: the same for a record-locator
    lookup's bound decision (``DecisionService.recheck_lookup``; no epoch)."""
    inp = parse_recheck(await read_json(request))
    service: DecisionService = request.app.state.decisions
    if isinstance(inp, LookupRecheckInput):  # a record-locator lookup's: never reusable
        looked = service.recheck_lookup(inp.lookup, inp.sender, inp.patient, principal.org_id or "")
        return fhir_response(
            {
                "resourceType": "Parameters",
                "parameter": [
                    {"name": "decision", "valueCode": "permit" if looked.permit else "deny"},
                    {"name": "reason", "valueString": looked.reason},
                    {"name": "break-glass", "valueBoolean": looked.break_glass},
                ],
            }
        )
    # Read before the consents are: a consent written after this moves the epoch past it.
    epoch = service.store.epoch()
    rechecked = service.recheck(inp.envelope, inp.sender, inp.recipient, principal.org_id or "")
    d = rechecked.decision
    params: list[dict[str, Any]] = [
        {"name": "decision", "valueCode": "permit" if d.permit else "deny"}
    ]
    params.append({"name": "reason", "valueString": d.reason})
    params.append({"name": "break-glass", "valueBoolean": d.break_glass})
    if rechecked.reusable:  # holds while the consent epoch stays where it is
        params.append({"name": "epoch", "valueString": str(epoch)})
    return fhir_response({"resourceType": "Parameters", "parameter": params})


@router.get("/fhir/Consent/$epoch")
async def epoch(request: Request, principal: Principal = Depends(DECIDE)) -> JSONResponse:
    """The consent epoch now (issue 19): it moves with every consent created or changed, so a
    decision a ``$recheck`` answered with epoch E still holds while this says E. The coordinator
    asks it just before each envelope it delivers, instead of a ``$recheck``."""
    service: DecisionService = request.app.state.decisions
    value = service.store.epoch()
    return fhir_response(
        {"resourceType": "Parameters", "parameter": [{"name": "epoch", "valueString": str(value)}]}
    )


@router.post("/disclosures", openapi_extra=_DISCLOSURE)
async def disclosures(request: Request, principal: Principal = Depends(REPORT)) -> JSONResponse:
    """A node or the coordinator reports data it disclosed. If a decision token is given, the
    report is checked against it; a report the decision does not cover is still recorded (so it
    cannot be hidden) but with a failure outcome, and the answer says so."""
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    allowed = {
        "patient",
        "recipient",
        "purpose",
        "classes",
        "envelope_id",
        "decision_token",
        "user",
    }
    unknown = set(body) - allowed
    if unknown:
        raise BadRequest(f"unknown fields: {', '.join(sorted(unknown))}")
    patient = check_pseudonym(body.get("patient"), "patient")
    recipient = check_org_id(body.get("recipient"), "recipient")
    purpose = check_purpose(body.get("purpose"), "purpose")
    classes = check_classes(body.get("classes"), "classes")
    if not classes:
        raise BadRequest("classes must not be empty", expression=["classes"])
    for name in ("envelope_id", "user", "decision_token"):
        value = body.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > 4096):
            raise BadRequest(f"{name} must be a string", expression=[name])
    covered, decision_id = None, None
    if body.get("decision_token"):
        try:
            signed = verify_decision_token(
                body["decision_token"],
                request.app.state.jwks,
                issuer=request.app.state.issuer,
                leeway=3600,  # a disclosure may be reported a while after the decision
            )
        except DecisionTokenError as exc:
            raise BadRequest(
                f"decision_token refused: {exc}", expression=["decision_token"]
            ) from None
        decision_id = signed.decision_id
        covered = (
            signed.permit
            and signed.patient == patient
            and signed.recipient == recipient
            and signed.purpose == purpose
            and classes <= signed.classes
        )
    seq = report_disclosure(
        request.app.state.ledger,
        reporter=principal.subject,
        patient=patient,
        recipient=recipient,
        purpose=purpose,
        classes=sorted(classes),
        envelope_id=body.get("envelope_id"),
        decision_id=decision_id,
        user=body.get("user"),
        observer=request.app.state.org_id,
        covered=covered,
    )
    return json_response({"recorded": seq, "covered_by_decision": covered}, 201)
