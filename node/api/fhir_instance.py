"""FHIR instance and type interactions: create (and conditional create), read, vread, update
(and conditional update), patch (and conditional patch), delete (and conditional delete),
history.

Reads take an :class:`~node.auth.deps.Access` and apply its compartment; create and update take
one too and pass the resource through :func:`~node.api.access.authorise_write` (a patient writes
only the types its scopes name, inside its own compartment, as its author); patch, delete and
the conditional writes use ``require_scope``, which refuses patient-context tokens before the
route runs. Every query
parameter and header is honoured or refused (400 naming it): reads take ``_summary``,
``_elements`` (and the negotiation's ``_format``/``_pretty``), ``If-None-Match`` and
``If-Modified-Since``; writes take ``Prefer: return=…`` and answer ``Preference-Applied``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from node.api.access import authorise_write, check_type_name, ensure_in_compartment
from node.api.body import fhir_response, read_json, read_resource, version_headers
from node.api.bundles import history_bundle
from node.api.negotiation import CONTROL_PARAMS
from node.api.patch import PATCH_TYPES, apply_patch
from node.api.shaping import applied_header, parse_prefer, parse_shaping, shape
from node.auth.deps import Access, require_access, require_scope
from node.auth.principal import Principal
from servicekit.openapi_bodies import fhir_body
from servicekit.outcome import BadRequest, NotFound, PreconditionFailed, operation_outcome

__all__ = ["router", "fhir_base", "refuse_params", "conditional_query"]

router = APIRouter(tags=["fhir"])
_READ_PARAMS = CONTROL_PARAMS | {"_summary", "_elements"}
_PATCH_RETRIES = 3


def fhir_base(request: Request) -> str:
    """The FHIR base URL as this client reached it (links and Location headers)."""
    return str(request.base_url).rstrip("/") + "/fhir"


def refuse_params(params: Sequence[tuple[str, str]], allowed: frozenset[str], what: str) -> None:
    """400 naming every query parameter ``what`` does not take (never silently ignored)."""
    unknown = sorted({k for k, _ in params if k not in allowed})
    if unknown:
        raise BadRequest(
            f"{what} does not take parameter(s) {', '.join(unknown)}",
            expression=unknown,
        )


def conditional_query(request: Request) -> str:
    """The search criteria of a conditional interaction (the query minus control parameters)."""
    pairs = [(k, v) for k, v in request.query_params.multi_items() if k not in CONTROL_PARAMS]
    return urlencode(pairs)


def _write_headers(request: Request, outcome: Any) -> dict[str, str]:
    headers = version_headers(outcome.resource)
    headers["Location"] = f"{fhir_base(request)}/{outcome.location}"
    return headers


def _write_response(request: Request, outcome: Any, message: str) -> Response:
    """A write's answer as ``Prefer: return=`` asks: the resource (default), nothing, or an
    OperationOutcome."""
    prefer = parse_prefer(request.headers.get("prefer"))
    headers = _write_headers(request, outcome)
    applied = applied_header(prefer, write=True)
    if applied:
        headers["Preference-Applied"] = applied
    if prefer.return_ == "minimal":
        return Response(status_code=outcome.status, headers=headers)
    if prefer.return_ == "OperationOutcome":
        body = operation_outcome(message, code="informational", severity="information")
        return fhir_response(body, outcome.status, headers)
    return fhir_response(outcome.resource, outcome.status, headers)


def _not_modified(request: Request, resource: dict[str, Any], headers: dict[str, str]) -> bool:
    wanted = request.headers.get("if-none-match")
    if wanted:
        return wanted == headers.get("ETag")  # If-None-Match wins over If-Modified-Since
    since = request.headers.get("if-modified-since")
    if not since:
        return False
    try:
        threshold = parsedate_to_datetime(since)
    except (TypeError, ValueError):
        raise BadRequest(f"If-Modified-Since {since!r} is not an HTTP date") from None
    if threshold.tzinfo is None:
        threshold = threshold.replace(tzinfo=UTC)
    updated = (resource.get("meta") or {}).get("lastUpdated")
    if not updated:
        return False
    when = datetime.fromisoformat(str(updated).replace("Z", "+00:00"))
    return when.replace(microsecond=0) <= threshold


def _check_body(resource: dict[str, Any], rtype: str, rid: str | None = None) -> None:
    if resource.get("resourceType") != rtype:
        raise BadRequest(
            f"resourceType {resource.get('resourceType')!r} does not match the URL type {rtype!r}"
        )
    if rid is not None and resource.get("id") != rid:
        raise BadRequest(
            f"resource id {resource.get('id')!r} does not match the id in the URL {rid!r}",
            expression=[f"{rtype}.id"],
        )


@router.post("/fhir/{rtype}", openapi_extra=fhir_body())
async def create(
    rtype: str,
    request: Request,
    access: Access = Depends(require_access(None, "create")),
) -> Response:
    """Create; search parameters in the URL (``POST Type?identifier=…``, as some clients send a
    conditional create) or ``If-None-Exist`` make it conditional."""
    check_type_name(rtype)
    resource = await read_resource(request)
    _check_body(resource, rtype)
    criteria = conditional_query(request)
    header = request.headers.get("if-none-exist")
    if criteria and header:
        raise BadRequest("give the conditional-create criteria once: If-None-Exist or the URL")
    if (criteria or header) and access.compartment is not None:
        # its search would not stay inside the patient's compartment
        raise BadRequest("conditional create is not available to patient-context tokens")
    store = request.app.state.store
    resource = authorise_write(store, access, resource)
    outcome = await run_in_threadpool(
        store.create,
        resource,
        if_none_exist=header or criteria or None,
        writer=access.principal.writer,
    )
    return _write_response(request, outcome, f"{rtype}/{outcome.resource['id']} created")


@router.get("/fhir/{rtype}/{rid}")
def read(
    rtype: str,
    rid: str,
    request: Request,
    access: Access = Depends(require_access(None, "read")),
) -> Response:
    check_type_name(rtype, rid)
    params = list(request.query_params.multi_items())
    refuse_params(params, _READ_PARAMS, "read")
    shaping = parse_shaping(params, rtype)
    store = request.app.state.store
    ensure_in_compartment(store, rtype, rid, access.compartment)
    resource = store.read(rtype, rid)
    headers = version_headers(resource)
    if _not_modified(request, resource, headers):
        return Response(status_code=304, headers=headers)
    return fhir_response(shape(resource, shaping), 200, headers)


@router.put("/fhir/{rtype}/{rid}", openapi_extra=fhir_body())
async def update(
    rtype: str,
    rid: str,
    request: Request,
    access: Access = Depends(require_access(None, "update")),
) -> Response:
    check_type_name(rtype, rid)
    refuse_params(list(request.query_params.multi_items()), CONTROL_PARAMS, "update")
    resource = await read_resource(request)
    _check_body(resource, rtype, rid)
    store = request.app.state.store
    resource = await run_in_threadpool(authorise_write, store, access, resource, replacing=rid)
    outcome = await run_in_threadpool(
        store.update,
        rtype,
        rid,
        resource,
        if_match=request.headers.get("if-match"),
        writer=access.principal.writer,
    )
    return _write_response(request, outcome, f"{rtype}/{rid} updated")


@router.put("/fhir/{rtype}", openapi_extra=fhir_body())
async def conditional_update(
    rtype: str,
    request: Request,
    principal: Principal = Depends(require_scope(None, "update")),
) -> Response:
    """``PUT Type?criteria``: update the one match, create when none, 412 when several."""
    check_type_name(rtype)
    criteria = conditional_query(request)
    if not criteria:
        raise BadRequest(f"PUT /fhir/{rtype} needs search criteria (or use PUT {rtype}/id)")
    resource = await read_resource(request)
    _check_body(resource, rtype)
    store = request.app.state.store
    outcome = await run_in_threadpool(
        store.update_conditional, rtype, criteria, resource, writer=principal.writer
    )
    return _write_response(request, outcome, f"{rtype}/{outcome.resource['id']} written")


async def _patch(
    request: Request, rtype: str, rid: str, principal: Principal, body: tuple[str, Any]
) -> Response:
    store = request.app.state.store
    content_type, patch = body
    if_match = request.headers.get("if-match")
    for attempt in range(_PATCH_RETRIES):
        current = await run_in_threadpool(store.read, rtype, rid)
        version = (current.get("meta") or {}).get("versionId")
        if if_match is not None and if_match != f'W/"{version}"':
            raise PreconditionFailed(f"{rtype}/{rid} is at version {version}, not {if_match}")
        patched = apply_patch(current, content_type, patch)
        try:
            outcome = await run_in_threadpool(
                store.update, rtype, rid, patched, if_match=f'W/"{version}"',
                writer=principal.writer,
            )  # fmt: skip
        except PreconditionFailed:
            if if_match is not None or attempt == _PATCH_RETRIES - 1:
                raise
            continue  # another writer came between the read and the update: patch again
        return _write_response(request, outcome, f"{rtype}/{rid} patched")
    raise AssertionError("unreachable")  # pragma: no cover


_PATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {t: {"schema": {}} for t in PATCH_TYPES},
    }
}


@router.patch("/fhir/{rtype}/{rid}", openapi_extra=_PATCH_BODY)
async def patch(
    rtype: str,
    rid: str,
    request: Request,
    principal: Principal = Depends(require_scope(None, "update")),
) -> Response:
    """JSON Patch or JSON Merge Patch of the current version (``If-Match`` honoured)."""
    check_type_name(rtype, rid)
    refuse_params(list(request.query_params.multi_items()), CONTROL_PARAMS, "patch")
    body = await read_json(request, PATCH_TYPES)
    return await _patch(request, rtype, rid, principal, body)


@router.patch("/fhir/{rtype}", openapi_extra=_PATCH_BODY)
async def conditional_patch(
    rtype: str,
    request: Request,
    principal: Principal = Depends(require_scope(None, "update")),
) -> Response:
    """``PATCH Type?criteria``: patch the one match (none: 404, several: 412)."""
    check_type_name(rtype)
    criteria = conditional_query(request)
    if not criteria:
        raise BadRequest(f"PATCH /fhir/{rtype} needs search criteria (or use PATCH {rtype}/id)")
    body = await read_json(request, PATCH_TYPES)
    store = request.app.state.store
    pairs = [(k, v) for k, v in request.query_params.multi_items() if k not in CONTROL_PARAMS]
    found = await run_in_threadpool(store.search, rtype, [*pairs, ("_count", "2")])
    if found.total == 0:
        raise NotFound(f"conditional patch: no {rtype} matches {criteria}")
    if found.total > 1:
        raise PreconditionFailed(f"conditional patch matched {found.total} {rtype} resources")
    return await _patch(request, rtype, found.resources[0]["id"], principal, body)


@router.delete("/fhir/{rtype}/{rid}")
def delete(
    rtype: str,
    rid: str,
    request: Request,
    principal: Principal = Depends(require_scope(None, "delete")),
) -> Response:
    """Delete (409 naming the referrers while other resources still reference it, unless the
    node is configured without referential integrity)."""
    check_type_name(rtype, rid)
    refuse_params(list(request.query_params.multi_items()), CONTROL_PARAMS, "delete")
    request.app.state.store.delete(rtype, rid, writer=principal.writer)
    return fhir_response(
        operation_outcome(f"{rtype}/{rid} deleted", code="informational", severity="information")
    )


@router.delete("/fhir/{rtype}")
def conditional_delete(
    rtype: str,
    request: Request,
    principal: Principal = Depends(require_scope(None, "delete")),
) -> Response:
    """``DELETE Type?criteria``: deletes the one match; none: 200 saying so; several: 412."""
    check_type_name(rtype)
    criteria = conditional_query(request)
    if not criteria:
        raise BadRequest(
            f"DELETE /fhir/{rtype} needs search criteria (type-wide delete is not supported)"
        )
    deleted = request.app.state.store.delete_conditional(rtype, criteria, writer=principal.writer)
    text = f"{deleted} {rtype} deleted" if deleted else f"no {rtype} matched; nothing deleted"
    return fhir_response(operation_outcome(text, code="informational", severity="information"))


@router.get("/fhir/{rtype}/{rid}/_history")
def history(
    rtype: str,
    rid: str,
    request: Request,
    access: Access = Depends(require_access(None, "read")),
) -> Response:
    check_type_name(rtype, rid)
    refuse_params(list(request.query_params.multi_items()), CONTROL_PARAMS, "history")
    store = request.app.state.store
    ensure_in_compartment(store, rtype, rid, access.compartment)
    versions = [(h.resource, h.deleted) for h in store.history_entries(rtype, rid)]
    return fhir_response(history_bundle(fhir_base(request), versions))


@router.get("/fhir/{rtype}/{rid}/_history/{vid}")
def vread(
    rtype: str,
    rid: str,
    vid: str,
    request: Request,
    access: Access = Depends(require_access(None, "read")),
) -> Response:
    check_type_name(rtype, rid)
    params = list(request.query_params.multi_items())
    refuse_params(params, _READ_PARAMS, "vread")
    shaping = parse_shaping(params, rtype)
    store = request.app.state.store
    ensure_in_compartment(store, rtype, rid, access.compartment)
    resource = store.vread(rtype, rid, vid)
    return fhir_response(shape(resource, shaping), 200, version_headers(resource))
