"""System-level FHIR interactions: ``GET /fhir/metadata`` and ``POST /fhir`` (transaction/batch)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from node.api.body import fhir_response, read_resource
from node.auth.deps import authenticate
from node.auth.principal import Principal
from servicekit.outcome import BadRequest, Forbidden

__all__ = ["router", "entry_interaction"]

router = APIRouter(tags=["fhir"])


@router.get("/fhir/metadata")
def metadata(request: Request) -> Response:
    """The CapabilityStatement (public, as FHIR requires: clients read it before logging in)."""
    return fhir_response(request.app.state.capability)


def entry_interaction(entry: dict[str, Any]) -> tuple[str, str]:
    """(resource type, interaction) of one transaction/batch entry, from its request."""
    req = entry.get("request")
    if not isinstance(req, dict) or not req.get("method") or not req.get("url"):
        raise BadRequest("every Bundle entry needs request.method and request.url")
    method = str(req["method"]).upper()
    url = str(req["url"]).split("?", 1)
    path = url[0].strip("/")
    rtype = path.split("/", 1)[0]
    if method == "GET":
        interaction = "read" if "/" in path else "search"
    else:
        interaction = {
            "POST": "create",
            "PUT": "update",
            "PATCH": "update",
            "DELETE": "delete",
        }.get(method, "")
    if not interaction or not rtype:
        raise BadRequest(f"unsupported Bundle entry request {method} {req['url']}")
    return rtype, interaction


def authorise_bundle(principal: Principal, bundle: dict[str, Any]) -> None:
    """Every entry must be within the token's scopes; patient-context tokens may not submit
    bundles (their compartment limit could not be applied entry by entry)."""
    for index, entry in enumerate(bundle.get("entry") or []):
        if not isinstance(entry, dict):
            raise BadRequest(f"Bundle.entry[{index}] is not an object")
        rtype, interaction = entry_interaction(entry)
        try:
            compartment = principal.compartment_for(rtype, interaction)
        except Forbidden as exc:
            raise Forbidden(f"Bundle.entry[{index}]: {exc.diagnostics}") from None
        if compartment is not None:
            raise Forbidden("transaction/batch Bundles are not available to patient-context tokens")


@router.post("/fhir")
async def transaction_or_batch(
    request: Request, principal: Principal = Depends(authenticate)
) -> Response:
    bundle = await read_resource(request)
    if bundle.get("resourceType") != "Bundle":
        raise BadRequest(f"POST /fhir takes a Bundle, not {bundle.get('resourceType')!r}")
    kind = bundle.get("type")
    if kind not in ("transaction", "batch"):
        raise BadRequest(
            f"POST /fhir takes a transaction or batch Bundle, not {kind!r} "
            "(store documents and collections with POST /fhir/Bundle)"
        )
    authorise_bundle(principal, bundle)
    store = request.app.state.store
    handler = store.transaction if kind == "transaction" else store.batch
    return fhir_response(await run_in_threadpool(handler, bundle))
