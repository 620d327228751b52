"""Logging in, enrolment and the patient's own disclosure list."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from consent.accounts import PatientAccounts
from consent.auth import Authenticator, Principal, require
from consent.disclosures import list_disclosures
from consent.http_io import json_response, read_form, read_json
from consent.known_by import known_by
from consent.model import check_pseudonym
from consent.parameters import check_candidates
from consent.patient_login import check_patient_password
from servicekit.openapi_bodies import form_body, json_body
from servicekit.outcome import BadRequest

__all__ = ["router"]

router = APIRouter()
ISSUE_CODES = require("system/Enrolment.c", kind="org")
OWN_DISCLOSURES = require("patient/Disclosure.rs", kind="patient")


_S = {"type": "string"}
_ORG_TOKEN = form_body(
    {
        "grant_type": _S,
        "client_assertion_type": _S,
        "client_assertion": _S,
        "acting_role": _S,
        "acting_user": _S,
    },
    ("grant_type",),
)
_PATIENT_TOKEN = form_body({"grant_type": _S, "username": _S, "password": _S})


def _auth(request: Request) -> Authenticator:
    return request.app.state.authenticator  # type: ignore[no-any-return]


def _accounts(request: Request) -> PatientAccounts:
    return request.app.state.accounts  # type: ignore[no-any-return]


@router.post("/auth/token", openapi_extra=_ORG_TOKEN)
async def org_token(request: Request) -> JSONResponse:
    """OAuth2 client-credentials grant with a cert-backed organisation assertion."""
    return json_response(_auth(request).org_token(await read_form(request)))


@router.post("/auth/patient-token", openapi_extra=_PATIENT_TOKEN)
async def patient_token(request: Request) -> JSONResponse:
    form = await read_form(request)
    if form.get("grant_type", "password") != "password":
        raise BadRequest("grant_type must be password")
    username, password = form.get("username", ""), form.get("password", "")
    if not username or not password:
        raise BadRequest("username and password are required")
    pseudonym = await check_patient_password(request, username, password)
    return json_response(_auth(request).patient_token(pseudonym))


@router.post(
    "/enrolment-codes",
    openapi_extra=json_body(
        {"patient": _S, "candidates": {"type": "array", "items": _S}}, ("patient",)
    ),
)
async def enrolment_code(
    request: Request, principal: Principal = Depends(ISSUE_CODES)
) -> JSONResponse:
    """A node issues a one-time enrolment code for a patient it knows (by pseudonym).
    ``candidates``: the patient's pseudonyms under the other key versions the authority still
    holds (the node's own evaluations, issue 23): the code is for the one the patient is known
    by (``consent.known_by``; answered as ``patient``), else for ``patient``."""
    body = await read_json(request)
    if not isinstance(body, dict) or set(body) - {"patient", "candidates"}:
        raise BadRequest('body must be {"patient": "<pseudonym>"[, "candidates": [...]]}')
    patient = check_pseudonym(body.get("patient"), "patient")
    candidates = check_candidates(patient, body.get("candidates", []), "candidates")
    chosen = known_by(request.app.state.engine, patient, candidates)
    issued = _accounts(request).issue_code(chosen, issued_by=principal.subject)
    return json_response(
        {
            "code": issued.code,
            "patient": issued.patient,
            "expires_at": issued.expires_at.isoformat().replace("+00:00", "Z"),
        },
        201,
    )


@router.post("/enrol", openapi_extra=json_body({"code": _S, "password": _S}, ("code", "password")))
async def enrol(request: Request) -> JSONResponse:
    """The patient redeems the code once and sets a password; returns the login handle."""
    body = await read_json(request)
    if not isinstance(body, dict) or set(body) - {"code", "password"}:
        raise BadRequest('body must be {"code": "...", "password": "..."}')
    done = await run_in_threadpool(
        _accounts(request).enrol,
        body.get("code"),  # type: ignore[arg-type]
        body.get("password"),  # type: ignore[arg-type]
    )  # argon2, like a login: off the event loop
    return json_response({"patient": done.patient, "username": done.handle}, 201)


@router.get("/patients/me/disclosures")
def my_disclosures(
    request: Request,
    include_refused: bool = False,
    principal: Principal = Depends(OWN_DISCLOSURES),
) -> JSONResponse:
    assert principal.patient is not None
    items = list_disclosures(
        request.app.state.ledger, principal.patient, include_refused=include_refused
    )
    return json_response(
        {
            "patient": principal.patient,
            "total": len(items),
            "disclosures": [i.as_json() for i in items],
        }
    )
