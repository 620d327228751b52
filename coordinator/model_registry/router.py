"""The model registry's HTTP API, mounted on the coordinator's HTTP app.

Every route needs an organisation assertion (trust.backend_auth: a JWT signed with the org's
CA-certified key, audience = the request URL, one-time ``jti``) from an organisation in the
coordinator's directory. Storing and (un)publishing need the regional authority; nodes read
published models only (the authority sees all).

- ``POST /models`` {card, weights, published} → {id}
- ``GET /models?task=`` → {models: [summary…]}
- ``GET /models/{id}`` → the model card
- ``GET /models/{id}/weights`` → {id, weights}
- ``POST /models/{id}/publish`` {published: bool}

What an upload must hold is :mod:`coordinator.model_registry.card_rules`; a refused upload is a
4xx OperationOutcome and nothing is stored.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request

from coordinator.model_registry.card_rules import (
    MAX_MODEL_BYTES,
    ModelRejected,
    check_published,
    check_upload,
)
from coordinator.model_registry.store import ModelStore
from servicekit.openapi_bodies import json_body
from servicekit.outcome import BadRequest, Forbidden, NotFound, PayloadTooLarge, Unauthorized
from trust.jti_store import DbReplayCache

__all__ = ["create_router", "router"]

MAX_PUBLISH_FLAG_BYTES = 1024


class Caller:
    def __init__(self, org_id: str, is_authority: bool) -> None:
        self.org_id = org_id
        self.is_authority = is_authority


def _services(request: Request) -> Any:
    services = getattr(request.app.state, "services", None)
    creds = getattr(request.app.state, "creds", None)
    if services is None or creds is None:
        raise RuntimeError("model registry mounted without coordinator services")
    return services, creds


def _store(request: Request) -> ModelStore:
    store = getattr(request.app.state, "model_store", None)
    if store is None:
        services, _ = _services(request)
        store = ModelStore(services.directory.engine)
        request.app.state.model_store = store
    return store


def _replay(request: Request, engine: Any) -> DbReplayCache:
    """The coordinator's database-backed jti cache (shared with its status API)."""
    replay = getattr(request.app.state, "assertion_replay", None)
    if replay is None:
        from coordinator.schema import assertion_jtis

        replay = DbReplayCache(engine, assertion_jtis)
        request.app.state.assertion_replay = replay
    return replay  # type: ignore[no-any-return]


def caller(request: Request) -> Caller:
    from trust.backend_auth import verify_org_assertion

    services, creds = _services(request)
    auth = request.headers.get("authorization", "")
    if not auth.lower().startswith("bearer "):
        raise Unauthorized("an organisation assertion is required")
    try:
        org_id = verify_org_assertion(
            auth[7:].strip(),
            ca_cert_pem=creds.ca_cert_pem,
            audience=str(request.url.replace(query="")),
            replay_cache=_replay(request, services.directory.engine),
            revoked=services.peers._revocations(),
        )
    except Exception as exc:  # noqa: BLE001
        raise Unauthorized(f"organisation assertion refused: {exc}") from None
    org = services.directory.get(org_id)
    if org is None or org.revoked:
        raise Forbidden(f"{org_id} is not a registered organisation")
    return Caller(org_id, org.level == "authority")


def _authority(c: Caller = Depends(caller)) -> Caller:
    if not c.is_authority:
        raise Forbidden(f"{c.org_id} is not the regional authority")
    return c


async def _json_body(request: Request, limit: int) -> Any:
    """The request's JSON body, refused (413) beyond ``limit`` bytes before it is all read."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes; at most {limit} are accepted")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise PayloadTooLarge(f"body larger than {limit} bytes")
    try:
        return json.loads(bytes(raw))
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("body is not JSON") from None


def create_router() -> APIRouter:
    r = APIRouter(tags=["model registry"])

    upload = json_body(
        {"card": {"type": "object"}, "weights": {}, "published": {"type": "boolean"}},
        ("card", "weights"),
    )
    flag = json_body({"published": {"type": "boolean"}}, ("published",))

    @r.post("/models", status_code=201, openapi_extra=upload)
    async def add_model(request: Request, who: Caller = Depends(_authority)) -> dict[str, Any]:
        body = await _json_body(request, MAX_MODEL_BYTES)
        try:
            upload = check_upload(body)
        except ModelRejected as exc:
            raise BadRequest(str(exc)) from None
        stored = _store(request).add(
            upload.card, upload.weights, created_by=who.org_id, published=upload.published
        )
        return {"id": stored.id, "published": stored.published}

    @r.get("/models")
    def list_models(
        request: Request, task: str | None = None, who: Caller = Depends(caller)
    ) -> dict[str, Any]:
        found = _store(request).list(task, published_only=not who.is_authority)
        return {"models": [m.summary() for m in found]}

    def _visible(request: Request, model_id: str, who: Caller) -> Any:
        model = _store(request).get(model_id)
        if model is None or (not model.published and not who.is_authority):
            raise NotFound(f"no model {model_id}")
        return model

    @r.get("/models/{model_id}")
    def get_card(request: Request, model_id: str, who: Caller = Depends(caller)) -> dict[str, Any]:
        model = _visible(request, model_id, who)
        return {**model.card, "id": model.id, "published": model.published}

    @r.get("/models/{model_id}/weights")
    def get_weights(
        request: Request, model_id: str, who: Caller = Depends(caller)
    ) -> dict[str, Any]:
        _visible(request, model_id, who)
        return {"id": model_id, "weights": _store(request).weights(model_id)}

    @r.post("/models/{model_id}/publish", openapi_extra=flag)
    async def publish(
        request: Request, model_id: str, who: Caller = Depends(_authority)
    ) -> dict[str, Any]:
        body = await _json_body(request, MAX_PUBLISH_FLAG_BYTES)
        if not isinstance(body, dict):
            raise BadRequest("body must be a JSON object {published: true|false}")
        try:
            flag = check_published(body, True)
        except ModelRejected as exc:
            raise BadRequest(str(exc)) from None
        if not _store(request).set_published(model_id, flag):
            raise NotFound(f"no model {model_id}")
        return {"id": model_id, "published": flag}

    return r


router = create_router()
