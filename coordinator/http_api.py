"""The coordinator's small HTTP API: ``/healthz`` (open) and ``/status`` (the authority only).

The authority authenticates with an organisation assertion (``trust.backend_auth``: a short JWT
signed with its PKI signing key, certificate in ``x5c``, audience = this API's ``/status`` URL,
``jti`` single-use, remembered in the database — ``coordinator_assertion_jti`` — until its
accepted window closes, across restarts); the organisation must be registered with level
``authority``.
The model registry router (coordinator/model_registry, issue 5) is mounted when present.
"""

from __future__ import annotations

import importlib
import logging
import time
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from coordinator.grpc_service import Services
from coordinator.schema import assertion_jtis
from coordinator.settings import CoordinatorSettings
from servicekit.outcome import Forbidden, Unauthorized, install_error_handlers
from servicekit.request_limits import InputLimits, install_request_limits
from trust.jti_store import DbReplayCache
from trust.pki import OrgCredentials

__all__ = ["create_status_app"]

log = logging.getLogger("ipjms.coordinator.http")


def create_status_app(
    services: Services, *, settings: CoordinatorSettings, creds: OrgCredentials
) -> FastAPI:
    app = FastAPI(title="IPJMS coordinator", docs_url=None, redoc_url=None)
    install_error_handlers(app)
    # One-time assertions are remembered in the database for their whole accepted window, so
    # neither a restart nor another replica accepts one twice (the model registry shares it).
    replay = DbReplayCache(services.directory.engine, assertion_jtis)
    app.state.assertion_replay = replay
    started = time.time()

    def authority(request: Request) -> str:
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer "):
            raise Unauthorized("an authority organisation assertion is required")
        from trust.backend_auth import verify_org_assertion

        audience = str(request.url.replace(query=""))
        try:
            org_id = verify_org_assertion(
                auth[7:].strip(),
                ca_cert_pem=creds.ca_cert_pem,
                audience=audience,
                replay_cache=replay,
                revoked=services.peers._revocations(),
            )
        except Exception as exc:
            raise Unauthorized(f"organisation assertion refused: {exc}") from None
        org = services.directory.get(org_id)
        if org is None or org.revoked or org.level != "authority":
            raise Forbidden(f"{org_id} is not the regional authority")
        return org_id

    @app.get("/healthz", response_model=None)
    def healthz() -> dict[str, Any] | JSONResponse:
        """Readiness: the database answers (503 while it does not; liveness is ``/livez``)."""
        from sqlalchemy.exc import SQLAlchemyError

        try:
            services.directory.list("authority")  # the database answers
        except SQLAlchemyError:
            return JSONResponse(
                {"status": "unavailable", "detail": "the database does not answer"},
                status_code=503,
            )
        return {"status": "ok", "uptime_s": round(time.time() - started, 1)}

    @app.get("/livez")
    def livez() -> dict[str, Any]:
        """Liveness: the process answers; the database is not asked (a database outage must
        not restart the service — ``/healthz`` is readiness and does ask it)."""
        return {"status": "alive"}

    def network_status() -> dict[str, Any]:
        """The network as the authority sees it (``/status`` and the console's network page)."""
        orgs = services.directory.list()
        refusals = services.queue.recent("refused", 20)
        dead = services.queue.recent("dead", 20)
        return {
            "organisations": [
                {
                    "org_id": o.org_id,
                    "name": o.name,
                    "level": o.level,
                    "online": o.online(),
                    "revoked": o.revoked,
                    "last_seen": o.last_seen,
                }
                for o in orgs
            ],
            "queue_depths": services.queue.depths(),
            "recent_refusals": refusals,
            "recent_dead_letters": dead,
        }

    @app.get("/status")
    def status(_org: str = Depends(authority)) -> dict[str, Any]:
        return network_status()

    app.state.network_status = network_status

    # /metrics: HTTP requests, plus the shared queue's depth read at scrape time.
    from coordinator.metrics import QueueDepthCollector
    from servicekit.service_metrics import install_metrics

    install_request_limits(app, InputLimits(max_body_bytes=settings.max_http_body_bytes))
    install_metrics(app, "coordinator").registry.register(
        QueueDepthCollector(services.queue.depths)
    )
    # The model registry router (coordinator/model_registry) reads these.
    app.state.services = services
    app.state.creds = creds
    _include_model_registry(app)
    from coordinator.console.pages import install_console

    install_console(
        app,
        settings.data_dir,
        federated_dir=settings.console_federated_dir,
        authority_dir=settings.console_authority_dir,
        registry_url=settings.console_registry_url,
    )
    return app


def _include_model_registry(app: FastAPI) -> None:
    """Mount coordinator/model_registry's router (owned by the federated engineer) if present."""
    try:
        module = importlib.import_module("coordinator.model_registry")
    except ModuleNotFoundError:
        return
    router = getattr(module, "router", None)
    if router is None:
        factory = getattr(module, "create_router", None)
        router = factory() if callable(factory) else None
    if router is not None:
        app.include_router(router)
