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
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from coordinator.model_registry.store import ModelStore
from trust.outcome import BadRequest, Forbidden, NotFound, PayloadTooLarge, Unauthorized
from trust.tokens import ReplayCache

__all__ = ["create_router", "router"]

MAX_BODY = 16 * 1024 * 1024
_replay = ReplayCache()


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
            replay_cache=_replay,
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


def _validate(body: Any) -> tuple[dict[str, Any], dict[str, Any], bool]:
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object {card, weights, published}")
    card, weights = body.get("card"), body.get("weights")
    if not isinstance(card, dict) or not isinstance(weights, dict) or not weights:
        raise BadRequest("card (object) and weights (non-empty object) are required")
    for key in ("task", "feature_spec", "rounds", "strategy", "participants", "evaluation"):
        if key not in card:
            raise BadRequest(f"model card lacks {key!r}")
    for p in card["participants"]:
        if not isinstance(p, dict) or "org" not in p or "cohort_size_rounded" not in p:
            raise BadRequest("each participant needs org and cohort_size_rounded")
        if int(p["cohort_size_rounded"]) % 10:
            raise BadRequest("cohort sizes in a card must be rounded to 10")
    for name, spec in weights.items():
        if not isinstance(spec, dict) or not {"dtype", "shape", "data"} <= set(spec):
            raise BadRequest(f"weights {name!r} need dtype, shape and data")
    return card, weights, bool(body.get("published", True))


def create_router() -> APIRouter:
    r = APIRouter(tags=["model registry"])

    @r.post("/models", status_code=201)
    async def add_model(request: Request, who: Caller = Depends(_authority)) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise PayloadTooLarge("model too large")
        try:
            import json

            body = json.loads(raw)
        except ValueError:
            raise BadRequest("body is not JSON") from None
        card, weights, published = _validate(body)
        stored = _store(request).add(card, weights, created_by=who.org_id, published=published)
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

    @r.post("/models/{model_id}/publish")
    async def publish(
        request: Request, model_id: str, who: Caller = Depends(_authority)
    ) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise BadRequest("body is not JSON") from None
        flag = bool(body.get("published", True)) if isinstance(body, dict) else True
        if not _store(request).set_published(model_id, flag):
            raise NotFound(f"no model {model_id}")
        return {"id": model_id, "published": flag}

    return r


router = create_router()
