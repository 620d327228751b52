"""System-level FHIR interactions: ``GET /fhir/metadata`` and ``POST /fhir`` (transaction/batch)."""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from node.api.body import fhir_response, read_resource
from node.api.capability import with_oauth_uris
from node.auth.authorize_routes import public_base_url
from node.auth.deps import authenticate
from node.auth.principal import Principal
from node.store import ParsedBundle, parse_bundle
from node.store.transaction_keys import request_hash
from servicekit.openapi_bodies import fhir_body
from servicekit.outcome import BadRequest, Forbidden

__all__ = ["router", "authorise_bundle"]

router = APIRouter(tags=["fhir"])
# A client's key for a transaction: a retry with the same key and Bundle gets the first response
# (nothing written again); see node/README.md.
IDEMPOTENCY_HEADER = "Idempotency-Key"


@router.get("/fhir/metadata")
def metadata(request: Request) -> Response:
    """The CapabilityStatement (public, as FHIR requires: clients read it before logging in)."""
    return fhir_response(with_oauth_uris(request.app.state.capability, public_base_url(request)))


def authorise_bundle(principal: Principal, bundle: ParsedBundle) -> None:
    """Every entry, as parsed, must be within the token's scopes; patient-context tokens may not
    submit bundles (their compartment limit could not be applied entry by entry)."""
    for entry in bundle.entries:
        try:
            compartment = principal.compartment_for(entry.rtype, entry.interaction)
        except Forbidden as exc:
            raise Forbidden(f"Bundle.entry[{entry.index}]: {exc.diagnostics}") from None
        if compartment is not None:
            raise Forbidden("transaction/batch Bundles are not available to patient-context tokens")


_BUNDLE = fhir_body(
    "Bundle",
    {
        "type": {"type": "string", "enum": ["transaction", "batch"]},
        "entry": {"type": "array", "items": {"type": "object"}},
    },
)


@router.post("/fhir", openapi_extra=_BUNDLE)
async def transaction_or_batch(
    request: Request, principal: Principal = Depends(authenticate)
) -> Response:
    if request.query_params:
        names = ", ".join(sorted(set(request.query_params)))
        if set(request.query_params) - {"_format", "_pretty"}:
            raise BadRequest(f"POST /fhir takes no query parameters ({names})")
    bundle = await read_resource(request)
    if bundle.get("resourceType") != "Bundle":
        raise BadRequest(f"POST /fhir takes a Bundle, not {bundle.get('resourceType')!r}")
    kind = bundle.get("type")
    if kind not in ("transaction", "batch"):
        raise BadRequest(
            f"POST /fhir takes a transaction or batch Bundle, not {kind!r} "
            "(store documents and collections with POST /fhir/Bundle)"
        )
    parsed = parse_bundle(bundle, kind)  # once: authorised and applied in this parsed form
    authorise_bundle(principal, parsed)
    store = request.app.state.store
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if kind == "batch":
        if key is not None:
            raise BadRequest(f"{IDEMPOTENCY_HEADER} is supported for transaction Bundles only")
        return fhir_response(await run_in_threadpool(store.batch, parsed, writer=principal.writer))
    response = await run_in_threadpool(
        partial(
            store.transaction,
            parsed,
            writer=principal.writer,
            idempotency_key=key,
            request_hash=request_hash(bundle) if key is not None else None,
        )
    )
    return fhir_response(response)
