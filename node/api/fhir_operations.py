"""FHIR operations beyond CRUD and search: ``$validate`` and ``Observation/$lastn``.

- ``POST /fhir/{type}/$validate`` (the resource, or a ``Parameters`` with ``resource``; needs
  the create right on the type, as the write would): the store's own validation (R4B
  structure, required bindings, plausibility of catalogued measures) without storing anything;
  the answer is an OperationOutcome, 200 whether or not the resource is valid (FHIR R4
  $validate), with ``error`` issues when it is not.
- ``GET /fhir/Observation/$lastn?patient=…[&code=…][&category=…][&max=n]``: the latest ``max``
  (default 1) Observations per code (the first coding's system|code) for one patient, newest
  first; the doctor's charts use it for the latest readings. Honours the caller's compartment.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from node.api.access import authorise_write, check_type_name, refuse_other_patients
from node.api.body import fhir_response, read_resource
from node.api.bundles import searchset
from node.api.fhir_instance import fhir_base, refuse_params
from node.api.negotiation import CONTROL_PARAMS
from node.auth.deps import Access, require_access
from node.store.validation import validate_resource
from servicekit.openapi_bodies import fhir_body
from servicekit.outcome import BadRequest, FhirError, operation_outcome

__all__ = ["router", "LASTN_MAX"]

router = APIRouter(tags=["fhir"])
LASTN_MAX = 100  # most readings per code one $lastn returns
_LASTN_SCAN = 5000  # most Observations one $lastn looks at (newest first)
_LASTN_PARAMS = CONTROL_PARAMS | {"patient", "subject", "code", "category", "max", "date"}


@router.post("/fhir/{rtype}/$validate", openapi_extra=fhir_body())
async def validate(
    rtype: str,
    request: Request,
    access: Access = Depends(require_access(None, "create")),
) -> Response:
    """Would this resource be accepted? Checked as a create by this caller would be (its
    scopes; a patient-context token only for its own compartment), nothing stored."""
    check_type_name(rtype)
    refuse_params(list(request.query_params.multi_items()), CONTROL_PARAMS, "$validate")
    body = await read_resource(request)
    if body.get("resourceType") == "Parameters" and rtype != "Parameters":
        found = [p for p in body.get("parameter") or [] if p.get("name") == "resource"]
        if len(found) != 1 or not isinstance(found[0].get("resource"), dict):
            raise BadRequest("$validate Parameters need exactly one 'resource' parameter")
        body = found[0]["resource"]
    if body.get("resourceType") != rtype:
        raise BadRequest(f"$validate on {rtype} got a {body.get('resourceType')!r}")
    if access.compartment is not None:
        body = authorise_write(request.app.state.store, access, body)  # 403 outside its own
    try:
        await run_in_threadpool(validate_resource, body, expected_type=rtype)
    except FhirError as exc:
        return fhir_response(exc.outcome())
    return fhir_response(
        operation_outcome(f"{rtype} is valid", code="informational", severity="information")
    )


def _code_key(resource: dict[str, Any]) -> str:
    codings = (resource.get("code") or {}).get("coding") or []
    if codings:
        first = codings[0]
        return f"{first.get('system', '')}|{first.get('code', '')}"
    return f"text|{(resource.get('code') or {}).get('text', '')}"


@router.get("/fhir/Observation/$lastn")
def lastn(
    request: Request,
    access: Access = Depends(require_access("Observation", "search")),
) -> Response:
    params = list(request.query_params.multi_items())
    refuse_params(params, _LASTN_PARAMS, "$lastn")
    values = dict(params)
    subject = values.get("patient") or values.get("subject")
    if not subject:
        raise BadRequest("$lastn needs patient (or subject)", expression=["patient"])
    try:
        n = int(values.get("max", "1"))
    except ValueError:
        raise BadRequest("max must be an integer", expression=["max"]) from None
    if not 1 <= n <= LASTN_MAX:
        raise BadRequest(f"max must be 1..{LASTN_MAX}", expression=["max"])
    query = [(k, v) for k, v in params if k not in CONTROL_PARAMS and k != "max"]
    refuse_other_patients("Observation", query, access.compartment)
    store = request.app.state.store
    kept: dict[str, list[dict[str, Any]]] = {}
    offset = 0
    while offset < _LASTN_SCAN:
        page = store.search(
            "Observation",
            [
                *query,
                ("_sort", "-date,-_lastUpdated"),
                ("_count", "1000"),
                ("_offset", str(offset)),
            ],
            compartment_patient=access.compartment,
        )
        for obs in page.resources:
            group = kept.setdefault(_code_key(obs), [])
            if len(group) < n:
                group.append(obs)
        offset += len(page.resources)
        if len(page.resources) < 1000:
            break
    matches = [obs for group in kept.values() for obs in group]
    return fhir_response(
        searchset(
            fhir_base(request),
            "Observation/$lastn",
            [(k, v) for k, v in params if k not in CONTROL_PARAMS],
            total=len(matches),
            offset=0,
            count=len(matches),
            matches=matches,
        )
    )
