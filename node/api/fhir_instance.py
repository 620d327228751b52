"""FHIR instance and type interactions: create, read, vread, update, delete, history.

Reads take an :class:`~node.auth.deps.Access` and apply its compartment; create and update take
one too and pass the resource through :func:`~node.api.access.authorise_write` (a patient writes
only the types its scopes name, inside its own compartment, as its author); delete uses
``require_scope``, which refuses patient-context tokens before the route runs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from node.api.access import authorise_write, check_type_name, ensure_in_compartment
from node.api.body import fhir_response, read_resource, version_headers
from node.api.bundles import history_bundle
from node.auth.deps import Access, require_access, require_scope
from node.auth.principal import Principal
from servicekit.openapi_bodies import fhir_body
from servicekit.outcome import BadRequest, operation_outcome

__all__ = ["router", "fhir_base"]

router = APIRouter(tags=["fhir"])


def fhir_base(request: Request) -> str:
    """The FHIR base URL as this client reached it (links and Location headers)."""
    return str(request.base_url).rstrip("/") + "/fhir"


def _write_headers(request: Request, outcome: Any) -> dict[str, str]:
    headers = version_headers(outcome.resource)
    headers["Location"] = f"{fhir_base(request)}/{outcome.location}"
    return headers


def _not_modified(request: Request, headers: dict[str, str]) -> bool:
    wanted = request.headers.get("if-none-match")
    return bool(wanted) and wanted == headers.get("ETag")


@router.post("/fhir/{rtype}", openapi_extra=fhir_body())
async def create(
    rtype: str,
    request: Request,
    access: Access = Depends(require_access(None, "create")),
) -> Response:
    check_type_name(rtype)
    resource = await read_resource(request)
    if resource.get("resourceType") != rtype:
        raise BadRequest(
            f"resourceType {resource.get('resourceType')!r} does not match the URL type {rtype!r}"
        )
    store = request.app.state.store
    if_none_exist = request.headers.get("if-none-exist")
    if if_none_exist and access.compartment is not None:
        # its search would not stay inside the patient's compartment
        raise BadRequest("If-None-Exist is not available to patient-context tokens")
    resource = authorise_write(store, access, resource)
    outcome = await run_in_threadpool(
        store.create, resource, if_none_exist=if_none_exist, writer=access.principal.writer
    )
    return fhir_response(outcome.resource, outcome.status, _write_headers(request, outcome))


@router.get("/fhir/{rtype}/{rid}")
def read(
    rtype: str,
    rid: str,
    request: Request,
    access: Access = Depends(require_access(None, "read")),
) -> Response:
    check_type_name(rtype, rid)
    store = request.app.state.store
    ensure_in_compartment(store, rtype, rid, access.compartment)
    resource = store.read(rtype, rid)
    headers = version_headers(resource)
    if _not_modified(request, headers):
        return Response(status_code=304, headers=headers)
    return fhir_response(resource, 200, headers)


@router.put("/fhir/{rtype}/{rid}", openapi_extra=fhir_body())
async def update(
    rtype: str,
    rid: str,
    request: Request,
    access: Access = Depends(require_access(None, "update")),
) -> Response:
    check_type_name(rtype, rid)
    resource = await read_resource(request)
    if resource.get("resourceType") != rtype:
        raise BadRequest(
            f"resourceType {resource.get('resourceType')!r} does not match the URL type {rtype!r}"
        )
    if resource.get("id") != rid:
        raise BadRequest(
            f"resource id {resource.get('id')!r} does not match the id in the URL {rid!r}",
            expression=[f"{rtype}.id"],
        )
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
    return fhir_response(outcome.resource, outcome.status, _write_headers(request, outcome))


@router.delete("/fhir/{rtype}/{rid}")
def delete(
    rtype: str,
    rid: str,
    request: Request,
    principal: Principal = Depends(require_scope(None, "delete")),
) -> Response:
    check_type_name(rtype, rid)
    request.app.state.store.delete(rtype, rid, writer=principal.writer)
    return fhir_response(
        operation_outcome(f"{rtype}/{rid} deleted", code="informational", severity="information")
    )


@router.get("/fhir/{rtype}/{rid}/_history")
def history(
    rtype: str,
    rid: str,
    request: Request,
    access: Access = Depends(require_access(None, "read")),
) -> Response:
    check_type_name(rtype, rid)
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
    store = request.app.state.store
    ensure_in_compartment(store, rtype, rid, access.compartment)
    resource = store.vread(rtype, rid, vid)
    return fhir_response(resource, 200, version_headers(resource))
