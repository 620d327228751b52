"""FHIR search (``GET /fhir/{type}``) and ``Patient/{id}/$everything``, with paging links."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from node.api.access import check_type_name, refuse_other_patients
from node.api.body import fhir_response
from node.api.bundles import searchset
from node.api.fhir_instance import fhir_base
from node.auth.deps import Access, require_access
from node.auth.principal import Principal
from node.store.search_params import SUPPORTED_SEARCH_PARAMS
from servicekit.outcome import BadRequest, NotFound
from trust.scopes import allows

__all__ = ["router"]

router = APIRouter(tags=["fhir"])
_EVERYTHING_PARAMS = {"_since", "_type", "_count", "_offset"}


@router.get("/fhir/Patient/{rid}/$everything")
def everything(
    rid: str,
    request: Request,
    access: Access = Depends(require_access("Patient", "read")),
) -> Response:
    check_type_name("Patient", rid)
    principal, compartment = access.principal, access.compartment
    if compartment is not None and compartment != rid:
        raise NotFound(f"Patient/{rid} is not available to this token")
    params = list(request.query_params.multi_items())
    unknown = sorted({k for k, _ in params if k not in _EVERYTHING_PARAMS})
    if unknown:
        raise BadRequest(
            f"$everything does not support parameter(s) {', '.join(unknown)}; "
            f"supported: {', '.join(sorted(_EVERYTHING_PARAMS))}"
        )
    values = dict(params)
    requested = None
    if values.get("_type"):
        requested = [t.strip() for t in values["_type"].split(",") if t.strip()]
        for t in requested:
            check_type_name(t)
    types = _readable_types(principal, requested)
    count = _int_param(values, "_count")
    offset = _int_param(values, "_offset") or 0
    result = request.app.state.store.everything(
        rid,
        since=values.get("_since"),
        types=types,
        count=count,
        offset=offset,
        compartment_patient=compartment,
    )
    return fhir_response(
        searchset(
            fhir_base(request),
            f"Patient/{rid}/$everything",
            params,
            total=result.total,
            offset=result.offset,
            count=result.count,
            matches=result.resources,
            included=result.included,
        )
    )


@router.get("/fhir/{rtype}")
def search(
    rtype: str,
    request: Request,
    access: Access = Depends(require_access(None, "search")),
) -> Response:
    check_type_name(rtype)
    params = list(request.query_params.multi_items())
    refuse_other_patients(rtype, params, access.compartment)
    result = request.app.state.store.search(rtype, params, compartment_patient=access.compartment)
    return fhir_response(
        searchset(
            fhir_base(request),
            rtype,
            params,
            total=result.total,
            offset=result.offset,
            count=result.count,
            matches=result.resources,
            included=result.included,
        )
    )


def _int_param(values: dict[str, str], name: str) -> int | None:
    if name not in values:
        return None
    try:
        value = int(values[name])
    except ValueError:
        raise BadRequest(f"{name} must be a non-negative integer") from None
    if value < 0:
        raise BadRequest(f"{name} must be a non-negative integer")
    return value


def _readable_types(principal: Principal, requested: list[str] | None) -> list[str] | None:
    """The types $everything may return: those requested (or all) that the token may read.
    None means every type (the token reads everything)."""
    if requested is None and allows(principal.scopes, "*", "read"):
        return None
    candidates = requested if requested is not None else sorted(SUPPORTED_SEARCH_PARAMS)
    readable = [t for t in candidates if allows(principal.scopes, t, "read")]
    if requested is not None and not readable:
        raise BadRequest("the token may read none of the requested _type values")
    return readable
