"""FHIR search (``GET /fhir/{type}``, ``POST /fhir/{type}/_search``) and
``Patient/{id}/$everything`` (GET and POST), with paging links.

Search takes ``_summary``/``_elements`` (applied to the matches), ``Prefer: handling=lenient``
(unknown parameters are dropped, named in an OperationOutcome entry, and left out of the self
link; ``strict``, the default, refuses them with 400) and the negotiation's ``_format``/``_pretty``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from node.api.access import check_type_name, refuse_other_patients
from node.api.body import UnsupportedMediaType, fhir_response, read_resource
from node.api.bundles import searchset
from node.api.fhir_instance import fhir_base
from node.api.negotiation import CONTROL_PARAMS
from node.api.shaping import applied_header, parse_prefer, parse_shaping, shape
from node.auth.deps import Access, require_access
from node.auth.principal import Principal
from node.store.search_params import SUPPORTED_SEARCH_PARAMS
from node.store.search_query import is_known_param
from servicekit.openapi_bodies import form_body
from servicekit.outcome import BadRequest, NotFound, operation_outcome
from trust.scopes import allows

__all__ = ["router", "search_bundle"]

router = APIRouter(tags=["fhir"])
_EVERYTHING_PARAMS = {"_since", "_type", "_count", "_offset", "start", "end"} | CONTROL_PARAMS
_S = {"type": "string"}
_SEARCH_FORM = form_body({"_count": _S, "_id": _S}, ())


async def _form_params(request: Request) -> list[tuple[str, str]]:
    """Parameters sent as an ``application/x-www-form-urlencoded`` body (POST searches)."""
    raw = await request.body()
    if not raw.strip():
        return []
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise UnsupportedMediaType(
            f"a POST search takes application/x-www-form-urlencoded parameters, not {ctype!r}"
        )
    try:
        return parse_qsl(raw.decode(), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise BadRequest("search form is not valid UTF-8") from None


def search_bundle(
    request: Request, rtype: str, params: Sequence[tuple[str, str]], compartment: str | None
) -> Response:
    """Run a search as the request asks (shaping, lenient handling) and answer the Bundle."""
    refuse_other_patients(rtype, list(params), compartment)
    prefer = parse_prefer(request.headers.get("prefer"))
    shaping = parse_shaping(params, rtype, search=True)
    store_params = [
        (k, v)
        for k, v in params
        if k not in CONTROL_PARAMS and k != "_elements" and not (k == "_summary" and v != "count")
    ]
    ignored: list[str] = []
    if prefer.handling == "lenient":
        ignored = sorted({k for k, _ in store_params if not is_known_param(rtype, k)})
        store_params = [(k, v) for k, v in store_params if k not in ignored]
    result = request.app.state.store.search(rtype, store_params, compartment_patient=compartment)
    link_params = [(k, v) for k, v in params if k not in ignored and k not in CONTROL_PARAMS]
    bundle = searchset(
        fhir_base(request),
        rtype,
        link_params,
        total=result.total,
        offset=result.offset,
        count=result.count,
        matches=[shape(r, shaping) for r in result.resources],
        included=result.included,
    )
    if ignored:
        outcome = operation_outcome(
            f"ignored unknown search parameter(s) {', '.join(ignored)} (Prefer: handling=lenient)",
            code="not-supported",
            severity="warning",
        )
        bundle.setdefault("entry", []).append({"resource": outcome, "search": {"mode": "outcome"}})
    headers = {}
    applied = applied_header(prefer, search=True)
    if applied:
        headers["Preference-Applied"] = applied
    return fhir_response(bundle, 200, headers)


async def _everything(request: Request, rid: str, access: Access, params: list[Any]) -> Response:
    check_type_name("Patient", rid)
    principal, compartment = access.principal, access.compartment
    if compartment is not None and compartment != rid:
        raise NotFound(f"Patient/{rid} is not available to this token")
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
    result = await run_in_threadpool(
        lambda: request.app.state.store.everything(
            rid,
            since=values.get("_since"),
            types=types,
            count=count,
            offset=offset,
            compartment_patient=compartment,
            start=values.get("start"),
            end=values.get("end"),
        )
    )
    link_params = [(k, v) for k, v in params if k not in CONTROL_PARAMS]
    return fhir_response(
        searchset(
            fhir_base(request),
            f"Patient/{rid}/$everything",
            link_params,
            total=result.total,
            offset=result.offset,
            count=result.count,
            matches=result.resources,
            included=result.included,
        )
    )


@router.get("/fhir/Patient/{rid}/$everything")
async def everything(
    rid: str,
    request: Request,
    access: Access = Depends(require_access("Patient", "read")),
) -> Response:
    """The patient's record: ``_since``, ``_type``, ``_count``/``_offset``, ``start``/``end``
    (care dates)."""
    return await _everything(request, rid, access, list(request.query_params.multi_items()))


@router.post("/fhir/Patient/{rid}/$everything", openapi_extra=_SEARCH_FORM)
async def everything_post(
    rid: str,
    request: Request,
    access: Access = Depends(require_access("Patient", "read")),
) -> Response:
    """``$everything`` by POST (some clients' default): parameters in the URL, a form, or a
    ``Parameters`` resource of simple values."""
    if access.compartment is not None and access.compartment != rid:
        raise NotFound(f"Patient/{rid} is not available to this token")
    params = list(request.query_params.multi_items())
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in ("application/fhir+json", "application/json"):
        body = await read_resource(request)
        if body.get("resourceType") != "Parameters":
            raise BadRequest("$everything takes a Parameters resource")
        for p in body.get("parameter") or []:
            value = next((v for k, v in p.items() if k.startswith("value")), None)
            if not isinstance(p, dict) or "name" not in p or value is None:
                raise BadRequest("each Parameters.parameter needs a name and a simple value")
            params.append((str(p["name"]), str(value)))
    else:
        params += await _form_params(request)
    return await _everything(request, rid, access, params)


@router.get("/fhir/{rtype}")
def search(
    rtype: str,
    request: Request,
    access: Access = Depends(require_access(None, "search")),
) -> Response:
    check_type_name(rtype)
    return search_bundle(
        request, rtype, list(request.query_params.multi_items()), access.compartment
    )


@router.post("/fhir/{rtype}/_search", openapi_extra=_SEARCH_FORM)
async def search_post(
    rtype: str,
    request: Request,
    access: Access = Depends(require_access(None, "search")),
) -> Response:
    """Search by POST: parameters in the form body (and the URL), as by GET."""
    check_type_name(rtype)
    params = [*request.query_params.multi_items(), *await _form_params(request)]
    return await run_in_threadpool(search_bundle, request, rtype, params, access.compartment)


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
