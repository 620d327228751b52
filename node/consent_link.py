"""Patient enrolment in the consent registry, started at the node.

``POST /consent/enrolment-code`` with ``{"patient": "<local Patient id>"}`` by a doctor or a node
admin (a token that may read that Patient): the node computes the patient's regional pseudonym
from the national identifier and the linkage key, asks the consent registry (with this
organisation's credentials) for a one-time enrolment code, and returns it for the patient.
The patient then enrols at the registry (``POST <registry>/enrol`` with code and password).
The registry never learns the patient's name or national id.

A node feature (``ENROLMENT``): it uses the node's consent client and linkage key, built once by
the composition root; it has no tables and no background work.
"""

from __future__ import annotations

import logging
from functools import partial

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from consent.client import ConsentClient, ConsentRegistryError
from node.auth.deps import Principal, require_scope
from node.feature import Feature, NodeServices, node_services
from node.identity import patient_candidates
from servicekit.openapi_bodies import json_body
from servicekit.outcome import BadRequest, Forbidden, ServiceUnavailable, Unprocessable

__all__ = ["router", "ENROLMENT"]

log = logging.getLogger("ipjms.node.consent")
router = APIRouter()
ENROLLING_ROLES = frozenset({"doctor", "admin"})


class RegistryUnavailable(ServiceUnavailable):
    """No consent registry configured, or it refused this node."""


def _registry(services: NodeServices) -> ConsentClient:
    if services.consent is None:
        raise RegistryUnavailable("this node has no consent registry configured (consent.url)")
    return services.consent


@router.post(
    "/consent/enrolment-code",
    openapi_extra=json_body({"patient": {"type": "string"}}, ("patient",)),
)
async def enrolment_code(
    request: Request,
    principal: Principal = Depends(require_scope("Patient", "read")),
    services: NodeServices = Depends(node_services),
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
    patient = services.store.read("Patient", patient_id)  # NotFound / Gone
    # the patient's pseudonym under every key version the authority holds, the current first
    # (the node's own evaluations, each kept): after a key rotation the code is for the one the
    # registry knows the patient by, so their account and consents are reached (issue 23)
    every = await run_in_threadpool(patient_candidates, patient, services.pseudonymiser)
    if not every:
        raise Unprocessable("the patient has no national identifier; cannot link to the registry")
    registry = _registry(services)
    older = {"candidates": every[1:]} if len(every) > 1 else {}
    try:  # an outage or timeout is consent.client.RegistryUnavailable (503) already
        # a blocking HTTP call: in the thread pool, so other requests are served meanwhile
        issued = await run_in_threadpool(partial(registry.create_enrolment_code, every[0], **older))
    except ConsentRegistryError as exc:
        raise RegistryUnavailable(f"consent registry refused: {exc.message}") from None
    log.info("enrolment code issued for Patient/%s by %s", patient_id, principal.subject)
    return JSONResponse(
        {
            "patient": f"Patient/{patient_id}",
            "pseudonym": issued.get("patient", every[0]),
            "code": issued["code"],
            "expires_at": issued["expires_at"],
            "enrol_at": f"{registry.base_url}/enrol",
        },
        status_code=201,
        headers={"Cache-Control": "no-store"},
    )


ENROLMENT = Feature(name="enrolment", routers=(router,))
