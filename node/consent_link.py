"""Patient enrolment in the consent registry, started at the node.

``POST /consent/enrolment-code`` with ``{"patient": "<local Patient id>"}`` by a doctor or a node
admin (a token that may read that Patient): the node computes the patient's regional pseudonym
from the national identifier and the linkage key, asks the consent registry (with this
organisation's credentials) for a one-time enrolment code, and returns it for the patient.
The patient then enrols at the registry (``POST <registry>/enrol`` with code and password).
The registry never learns the patient's name or national id.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from node.auth.deps import Principal, require_scope
from node.identity import patient_pseudonym
from servicekit.openapi_bodies import json_body
from servicekit.outcome import BadRequest, Forbidden, ServiceUnavailable, Unprocessable

__all__ = ["router"]

log = logging.getLogger("ipjms.node.consent")
router = APIRouter()
ENROLLING_ROLES = frozenset({"doctor", "admin"})


class RegistryUnavailable(ServiceUnavailable):
    """No consent registry configured, or it refused this node."""


def _client(request: Request) -> Any:
    client = getattr(request.app.state, "consent_client", None)
    if client is not None:
        return client
    settings = request.app.state.settings
    if not settings.consent_url:
        raise RegistryUnavailable("this node has no consent registry configured (consent_url)")
    from consent.client import ConsentClient
    from trust.pki import load_org

    creds = load_org(settings.org_credentials_dir or settings.data_dir / "credentials")
    client = ConsentClient(settings.consent_url, creds)
    request.app.state.consent_client = client
    return client


@router.post(
    "/consent/enrolment-code",
    openapi_extra=json_body({"patient": {"type": "string"}}, ("patient",)),
)
async def enrolment_code(
    request: Request, principal: Principal = Depends(require_scope("Patient", "read"))
) -> JSONResponse:
    if principal.role not in ENROLLING_ROLES:
        raise Forbidden("only a doctor or a node admin may enrol a patient for consent")
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("body must be JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("patient"), str):
        raise BadRequest('body must be {"patient": "<Patient id>"}', expression=["patient"])
    patient_id = body["patient"].removeprefix("Patient/")
    patient = request.app.state.store.read("Patient", patient_id)  # NotFound / Gone
    from trust.pseudonym import load_or_create_linkage_key

    key = load_or_create_linkage_key(request.app.state.settings.linkage_key_file)
    pseudonym = patient_pseudonym(patient, key)
    if pseudonym is None:
        raise Unprocessable("the patient has no national identifier; cannot link to the registry")
    from consent.client import ConsentRegistryError

    try:  # an outage or timeout is consent.client.RegistryUnavailable (503) already
        issued = _client(request).create_enrolment_code(pseudonym)
    except ConsentRegistryError as exc:
        raise RegistryUnavailable(f"consent registry refused: {exc.message}") from None
    log.info("enrolment code issued for Patient/%s by %s", patient_id, principal.subject)
    return JSONResponse(
        {
            "patient": f"Patient/{patient_id}",
            "pseudonym": pseudonym,
            "code": issued["code"],
            "expires_at": issued["expires_at"],
            "enrol_at": f"{_client(request).base_url}/enrol",
        },
        status_code=201,
        headers={"Cache-Control": "no-store"},
    )
