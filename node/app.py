"""The node's composition root: ``create_app(settings) -> FastAPI``.

- builds the node's services **once** (:func:`build_services`: database and FhirStore, metrics,
  accounts and tokens, linkage key, PKI credentials, consent client);
- lists the node's features explicitly (:data:`FEATURES`) and mounts each feature's routers once;
- migrates every schema in **one place** (:func:`migrate_schemas`: the store's, then each
  feature's Alembic folders; defined in the light ``node/schemas.py`` and re-exported here) — at
  ``ipjms node init``/``serve`` (and the offline commands that open the database, through
  ``node.schemas`` without importing the features), never in worker processes or by a feature
  at run time;
- runs each feature's ``startup`` hooks in every worker, and its ``background`` work in exactly
  one worker per data dir (a lock file), for as long as the app runs;
- maps every error to an OperationOutcome.

A new feature: write its ``Feature`` (``node/feature.py``) and list it in :data:`FEATURES`;
one with tables also lists its Alembic folders in ``node.schemas.SCHEMAS``.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import Engine

from node.api.body import fhir_response
from node.api.capability import capability_statement
from node.api.cors import install_cors
from node.api.feature import FHIR_API
from node.api.metrics import MetricsMiddleware, NodeMetrics
from node.api.negotiation import FhirNegotiation
from node.auth.feature import AUTH
from node.auth.login_audit import login_failure_sink, node_ledger
from node.auth.service import AuthService, LoginFailure
from node.care.lifecycle import CARE
from node.consent_link import ENROLMENT
from node.exchange.lifecycle import EXCHANGE
from node.feature import BackgroundTask, Feature, NodeServices
from node.feeds.hl7v2.node_service import HL7_FEED
from node.patient.feature import PATIENT, regional_patient_tokens
from node.portal.feature import PORTAL
from node.pseudonym_store.feature import PSEUDONYMS
from node.schemas import migrate_schemas, migration_folders, open_store
from node.settings import NodeSettings
from servicekit.outcome import install_error_handlers
from servicekit.request_limits import InputLimits, install_request_limits

__all__ = [
    "FEATURES",
    "create_app",
    "app_factory",
    "build_services",
    "migrate_schemas",
    "migration_folders",
    "open_store",
]

log = logging.getLogger("ipjms.node")

# The FHIR models loaded at start (create_app); the other stored types load on first use.
STARTUP_MODELS = ("Patient",)

# The node's features, in mounting order. Add a feature by listing it here.
FEATURES: tuple[Feature, ...] = (
    AUTH,
    PSEUDONYMS,
    FHIR_API,
    HL7_FEED,
    EXCHANGE,
    ENROLMENT,
    CARE,
    PATIENT,
    PORTAL,
)


def _revocations(settings: NodeSettings) -> Callable[[], frozenset[str | int]]:
    """The CA's revocation list, read when asked (fails closed: no CA folder → refused)."""

    def revoked() -> frozenset[str | int]:
        from trust.certificates import CertificateError
        from trust.pki import revocation_list

        if settings.pki.ca_dir is None:
            raise CertificateError("no CA folder (pki.ca_dir) configured: revocation unknown")
        return revocation_list(settings.pki.ca_dir)

    return revoked


def _pseudonymiser(settings: NodeSettings, credentials: Any, engine: Engine) -> Any:
    """The authority's OPRF when ``pseudonym_url`` is set (no key on this node), keeping what it
    obtains in the node's database (``node_pseudonyms``: a restart asks again for none of it),
    else the region's shared linkage key (created if absent, as before issue 23)."""
    from node.pseudonym_store import open_node_store
    from trust.pseudonymiser import LinkageKeyPseudonymiser, authority_pseudonymiser, store_key

    if settings.pseudonym_url:
        ca_dir = settings.pki.ca_dir
        return authority_pseudonymiser(
            settings.pseudonym_url,
            credentials,
            ca_cert_file=ca_dir / "ca.cert.pem" if ca_dir is not None else None,
            # digests keyed from the organisation's signing key: not in the database; entries
            # of another store key (a re-issued signing key) are deleted here, at start
            store=open_node_store(engine, store_key(credentials)),
        )
    from trust.pseudonym import load_or_create_linkage_key

    return LinkageKeyPseudonymiser(load_or_create_linkage_key(settings.linkage_key_file))


def _credentials(settings: NodeSettings) -> Any:
    """This organisation's PKI credentials when a registry or coordinator needs them."""
    if not settings.needs_credentials:
        return None
    from trust.pki import load_org

    creds = load_org(settings.credentials_dir)
    if creds.org_id != settings.org_id:
        raise RuntimeError(
            f"credentials in {settings.credentials_dir} belong to {creds.org_id}, "
            f"not {settings.org_id}"
        )
    return creds


def build_services(
    settings: NodeSettings, *, migrate: bool = True, features: tuple[Feature, ...] = FEATURES
) -> NodeServices:
    """The node's services, built once per process and shared by every feature."""
    from consent.client import ConsentClient

    engine, store = open_store(settings, migrate=migrate, features=features)
    try:
        credentials = _credentials(settings)
        pseudonymiser = _pseudonymiser(settings, credentials, engine)
    except Exception:
        engine.dispose()
        raise
    if settings.consent.url is None:
        consent = None
    else:
        consent = ConsentClient(
            settings.consent.url,
            credentials,
            registry_org=settings.consent.registry_org,
            revoked=_revocations(settings),
        )
        if settings.consent.registry_org is None:
            log.warning(
                "consent.registry_org not set: consent decisions are verified against the "
                "registry's JWKS as served by %s, not against its CA-issued certificate",
                settings.consent.url,
            )
    auth = AuthService.for_node(settings, engine)
    auth.regional_patients = regional_patient_tokens(settings, engine, store, pseudonymiser)
    return NodeServices(
        settings=settings,
        engine=engine,
        store=store,
        metrics=NodeMetrics(),
        auth=auth,
        pseudonymiser=pseudonymiser,
        credentials=credentials,
        consent=consent,
    )


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
    lock runs the features' background work (one MLLP listener, exchange runner, care worker)."""
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


@asynccontextmanager
async def _running(
    feature: Feature, task: BackgroundTask, services: NodeServices, app: FastAPI
) -> AsyncIterator[None]:
    gauge = services.metrics.background_tasks.labels(feature.name, task.name)
    async with task.run(services, app):
        gauge.set(1)
        try:
            yield
        finally:
            gauge.set(0)


# Paging parameters are integers; the range keeps them inside every database's integer type.
_PAGING = (0, 2**31 - 1)


def node_input_limits(max_body_bytes: int) -> InputLimits:
    """The node's request limits: its body size setting, FHIR paging parameters as integers."""
    return InputLimits(
        max_body_bytes=max_body_bytes, integer_params={"_count": _PAGING, "_offset": _PAGING}
    )


def _count_login_failures(metrics: NodeMetrics) -> Any:
    def count_failure(failure: LoginFailure) -> None:
        metrics.login_failures.labels(failure.grant_type, failure.reason).inc()
        # No PHI: a fixed reason code, and the subject only when it is a known account/client.
        log.warning(
            "token request refused: grant=%s reason=%s known_subject=%s",
            failure.grant_type,
            failure.reason,
            failure.known_subject or "-",
        )

    return count_failure


def create_app(
    settings: NodeSettings, *, migrate: bool = True, features: tuple[Feature, ...] = FEATURES
) -> FastAPI:
    services = build_services(settings, migrate=migrate, features=features)
    store, metrics, engine = services.store, services.metrics, services.engine
    if hasattr(store, "warm_up"):
        # Fail now, not at the first request, if the FHIR models cannot load: Patient's brings
        # the base classes and the element types most resources use (~0.05 CPU-s). Every other
        # type's model loads on its first use (~5-80 ms once per process): loading all 50 here
        # cost every start ~0.5 CPU-s, mostly for types the node never receives.
        store.warm_up(STARTUP_MODELS)
    services.auth.failure_sinks.append(_count_login_failures(metrics))
    # ... and each one is a login_failure AuditEvent in the node's ledger (node/auth/login_audit.py)
    services.auth.failure_sinks.append(login_failure_sink(node_ledger(settings), settings.org_id))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            stack.callback(engine.dispose)
            for feature in features:
                for hook in feature.startup:
                    await stack.enter_async_context(hook(services, app))
            leader = stack.enter_context(_background_lock(settings.data_dir))
            metrics.background_leader.set(1 if leader else 0)
            for feature in features if leader else ():
                for task in feature.background:
                    if task.enabled(settings):
                        await stack.enter_async_context(_running(feature, task, services, app))
            log.info("node %s ready (%s)", settings.org_id, settings.level)
            yield

    app = FastAPI(
        title=f"IPJMS node {settings.org_id}",
        description="FHIR R4 REST API of a hospital or clinic node",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.services = services
    # The services one by one, for the routes and tests that read them from app.state.
    app.state.settings = settings
    app.state.engine = engine
    app.state.store = store
    app.state.auth = services.auth
    app.state.metrics = metrics
    app.state.capability = capability_statement(
        base_url=f"{settings.base_url}/fhir",
        name=settings.name,
        date=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00"),
        cors=bool(settings.api.cors_origins),
    )
    install_error_handlers(app)

    @app.get("/healthz", tags=["ops"])
    def healthz(request: Request) -> Response:
        """Readiness: the database answers (503 while it does not, so the node leaves its
        Service's endpoints without being restarted — liveness is ``/livez``)."""
        from sqlalchemy import text
        from sqlalchemy.exc import SQLAlchemyError

        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError:
            return fhir_response(
                {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {
                            "severity": "error",
                            "code": "transient",
                            "diagnostics": "not ready: the database does not answer",
                        }
                    ],
                },
                status=503,
            )
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

    @app.get("/livez", tags=["ops"])
    def livez() -> Response:
        """Liveness: the process answers; the database is not asked (an outage of it must not
        restart the node — ``/healthz`` is readiness and does ask it)."""
        return Response(status_code=204)

    @app.get("/metrics", tags=["ops"])
    def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.exposition()), media_type=CONTENT_TYPE_LATEST)

    for feature in features:
        for router in feature.routers:
            app.include_router(router)
    # The one input edge (servicekit.request_limits); metrics, added last, see every request,
    # refused ones included.
    app.add_middleware(FhirNegotiation)  # _format / Accept / _pretty, for every /fhir request
    install_request_limits(app, node_input_limits(settings.max_request_bytes))
    if settings.api.cors_origins:
        install_cors(app, settings.api.cors_origins)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
