"""The node's HTTP application: ``create_app(settings) -> FastAPI``.

Opens the database (migrating the store and account tables to head), wires the FHIR routes, the
token endpoint, health and metrics, other areas' routers (``node/api/routers.py``) and background
services (``node/api/lifecycle.py``), and maps every error to an OperationOutcome.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from node.api import fhir_instance, fhir_search, fhir_system
from node.api.body import fhir_response
from node.api.capability import capability_statement
from node.api.lifecycle import BACKGROUND, BackgroundService, run_background
from node.api.metrics import MetricsMiddleware, NodeMetrics
from node.api.routers import EXTRA_ROUTERS
from node.auth import routes as auth_routes
from node.auth.accounts import migrate_accounts
from node.auth.login_audit import login_failure_sink, node_ledger
from node.auth.service import AuthService, LoginFailure
from node.feeds.hl7v2.node_service import mllp_service
from node.settings import NodeSettings
from servicekit.outcome import install_error_handlers
from servicekit.request_limits import InputLimits, install_request_limits
from servicekit.storage import make_engine

__all__ = ["create_app", "app_factory", "open_store", "BUILTIN_BACKGROUND"]

log = logging.getLogger("ipjms.node")
# The node's own background services (other areas register theirs in node/api/lifecycle.py):
# the HL7 v2 MLLP listener, on when settings.mllp_port is set.
BUILTIN_BACKGROUND: list[BackgroundService] = [mllp_service]


def open_store(settings: NodeSettings, *, migrate: bool = True):  # type: ignore[no-untyped-def]
    """Engine and FhirStore of the node, schemas migrated to head (store + accounts) unless
    ``migrate`` is False (worker processes: the parent migrated once before starting them)."""
    from node.store import FhirStore
    from node.store import migrate as migrate_store

    engine = make_engine(settings.database_url)
    if migrate:
        migrate_store(engine)
        migrate_accounts(engine)
    return engine, FhirStore(engine, base_url=f"{settings.base_url}/fhir")


def app_factory() -> FastAPI:
    """Entry point of ``ipjms node serve --workers N`` worker processes: settings from the
    environment (``IPJMS_NODE_DATA_DIR`` and the overrides the parent exported)."""
    from node.settings import load_settings
    from servicekit.logging_setup import configure_logging

    configure_logging("node")  # worker processes start with no logging set up
    return create_app(load_settings(require_init=True), migrate=False)


@contextmanager
def _background_lock(data_dir: Path) -> Iterator[bool]:
    """True in exactly one process per data dir: with several workers, only the holder of this
    lock runs the background services (one MLLP listener, one exchange loop)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "background.lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# Paging parameters are integers; the range keeps them inside every database's integer type.
_PAGING = (0, 2**31 - 1)


def node_input_limits(max_body_bytes: int) -> InputLimits:
    """The node's request limits: its body size setting, FHIR paging parameters as integers."""
    return InputLimits(
        max_body_bytes=max_body_bytes, integer_params={"_count": _PAGING, "_offset": _PAGING}
    )


def create_app(settings: NodeSettings, *, migrate: bool = True) -> FastAPI:
    engine, store = open_store(settings, migrate=migrate)
    if hasattr(store, "warm_up"):
        store.warm_up()  # load the FHIR models now, not during the first request
    metrics = NodeMetrics()
    auth = AuthService.for_node(settings, engine)

    def count_failure(failure: LoginFailure) -> None:
        metrics.login_failures.labels(failure.grant_type, failure.reason).inc()
        # No PHI: a fixed reason code, and the subject only when it is a known account/client.
        log.warning(
            "token request refused: grant=%s reason=%s known_subject=%s",
            failure.grant_type,
            failure.reason,
            failure.known_subject or "-",
        )

    auth.failure_sinks.append(count_failure)
    # ... and each one is a login_failure AuditEvent in the node's ledger (<data dir>/audit.db)
    auth.failure_sinks.append(login_failure_sink(node_ledger(settings), settings.org_id))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with _background_lock(settings.data_dir) as leader:
            services = [*BUILTIN_BACKGROUND, *BACKGROUND] if leader else []
            async with run_background(app, services):
                log.info("node %s ready (%s)", settings.org_id, settings.level)
                yield
        engine.dispose()

    app = FastAPI(
        title=f"IPJMS node {settings.org_id}",
        description="FHIR R4 REST API of a hospital or clinic node",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.store = store
    app.state.auth = auth
    app.state.metrics = metrics
    app.state.capability = capability_statement(
        base_url=f"{settings.base_url}/fhir",
        name=settings.name,
        date=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00"),
    )
    install_error_handlers(app)

    @app.get("/healthz", tags=["ops"])
    def healthz(request: Request) -> Response:
        from sqlalchemy import text

        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return fhir_response(
            {
                "resourceType": "OperationOutcome",
                "issue": [
                    {
                        "severity": "information",
                        "code": "informational",
                        "diagnostics": f"ok: node {settings.org_id}",
                    }
                ],
            }
        )

    @app.get("/metrics", tags=["ops"])
    def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.exposition()), media_type=CONTENT_TYPE_LATEST)

    app.include_router(auth_routes.router)
    app.include_router(fhir_system.router)
    app.include_router(fhir_search.router)
    app.include_router(fhir_instance.router)
    for router in EXTRA_ROUTERS:
        app.include_router(router)
    # The one input edge (servicekit.request_limits); metrics, added last, see every request,
    # refused ones included.
    install_request_limits(app, node_input_limits(settings.max_request_bytes))
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
