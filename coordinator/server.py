"""Wire the coordinator together and run it: the gRPC server (mutual TLS) and the HTTP status
API in one process. ``ipjms coordinator serve`` calls :func:`run`."""

from __future__ import annotations

import logging
import os
import signal
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from sqlalchemy import Engine

from coordinator.consent_gate import ConsentGate
from coordinator.directory import Directory
from coordinator.grpc_service import ExchangeLimits, Services, add_servicers
from coordinator.locator import RecordLocator
from coordinator.notifier import InboxNotifier
from coordinator.peers import PeerAuthenticator
from coordinator.queue import EnvelopeQueue
from coordinator.routing_audit import RoutingAuditor
from coordinator.settings import CoordinatorSettings
from servicekit.storage import make_engine, upgrade_schema
from trust.pki import OrgCredentials, load_org

__all__ = ["MIGRATIONS", "open_database", "build_services", "start_grpc", "run"]

log = logging.getLogger("ipjms.coordinator")
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def open_database(url: str) -> Engine:
    engine = make_engine(url)
    upgrade_schema(engine, MIGRATIONS)
    return engine


def _consent_oracle(settings: CoordinatorSettings, creds: OrgCredentials) -> Any:
    if not settings.consent_url:
        log.warning("no consent registry configured: data-carrying envelopes will be refused")
        return None
    from consent.client import ConsentClient

    return ConsentClient(settings.consent_url, creds)


def build_services(
    settings: CoordinatorSettings, engine: Engine, creds: OrgCredentials
) -> Services:
    from trust.audit_ledger import AuditLedger

    directory = Directory(engine)
    queue = EnvelopeQueue(
        engine,
        # unique per replica (port 0: the port is not known yet, the process id is)
        replica_id=f"{settings.host}:{settings.port or f'pid{os.getpid()}'}",
        lease_seconds=settings.lease_seconds,
    )
    return Services(
        directory=directory,
        locator=RecordLocator(engine),
        queue=queue,
        peers=PeerAuthenticator(directory, ca_cert_pem=creds.ca_cert_pem, ca_dir=settings.ca_dir),
        gate=ConsentGate(_consent_oracle(settings, creds)),
        auditor=RoutingAuditor(AuditLedger(engine)),
        notifier=InboxNotifier(),
        limits=ExchangeLimits(
            max_envelope_bytes=settings.max_envelope_bytes,
            max_ttl_seconds=settings.max_ttl_seconds,
            rate_per_minute=settings.rate_per_minute,
            poll_interval=settings.poll_interval,
        ),
    )


def start_grpc(
    settings: CoordinatorSettings,
    services: Services,
    creds: OrgCredentials,
    *,
    interceptors: list[Any] | None = None,
) -> tuple[grpc.Server, int]:
    # Let oversized envelopes reach Send so the caller gets our clear RESOURCE_EXHAUSTED message;
    # far larger messages are cut off by gRPC itself (also RESOURCE_EXHAUSTED).
    limit = settings.max_envelope_bytes * 2 + 1024 * 1024
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.grpc_workers),
        interceptors=interceptors or None,
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ],
    )
    add_servicers(server, services)
    credentials = grpc.ssl_server_credentials(
        [(creds.tls_key_pem, creds.tls_cert_pem)],
        root_certificates=creds.ca_cert_pem,
        require_client_auth=True,
    )
    bound = server.add_secure_port(f"{settings.host}:{settings.port}", credentials)
    if not bound:
        raise RuntimeError(f"cannot bind gRPC port {settings.port}")
    server.start()
    return server, int(bound)  # the port it got (the OS picks for port 0)


def _sweeper(services: Services, stop: threading.Event) -> None:
    """Dead-letter expired envelopes even when their recipient never connects."""
    while not stop.wait(5.0):
        try:
            services.queue.expire(
                also=lambda conn, header: services.auditor.record_in(
                    conn, header, "dead", "expired before delivery"
                )
            )
        except Exception as exc:  # keep sweeping; the database may be briefly busy
            log.warning("expiry sweep failed: %s", type(exc).__name__)


def _ledger_anchor(settings: CoordinatorSettings, services: Services, creds: OrgCredentials) -> Any:
    """Signed checkpoints of the routing ledger, in a file outside its database."""
    from trust.ledger_anchor import CHECKPOINT_FILE, LedgerAnchor

    return LedgerAnchor(
        services.auditor.ledger,
        creds,
        settings.checkpoint_path or settings.data_dir / CHECKPOINT_FILE,
        log_id=f"{creds.org_id}/coordinator",
        interval=settings.checkpoint_interval,
    )


def _https_options(settings: CoordinatorSettings) -> dict[str, Any]:
    """uvicorn's TLS settings for the status API: the coordinator's own TLS certificate and key
    (a passphrase-protected key is opened with IPJMS_TLS_KEY_PASSPHRASE)."""
    if not settings.http_tls:
        return {}
    options: dict[str, Any] = {
        "ssl_certfile": str(settings.org_dir / "tls.cert.pem"),
        "ssl_keyfile": str(settings.org_dir / "tls.key.pem"),
    }
    passphrase = os.environ.get("IPJMS_TLS_KEY_PASSPHRASE")
    if passphrase:
        options["ssl_keyfile_password"] = passphrase
    return options


def run(settings: CoordinatorSettings) -> None:
    import uvicorn

    from coordinator.http_api import create_status_app
    from coordinator.metrics import GrpcMetrics
    from servicekit.http_serving import QuietServer
    from servicekit.logging_setup import configure_logging
    from servicekit.ports import announce_ports, bind_listener

    configure_logging("coordinator")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    creds = load_org(settings.org_dir)
    engine = open_database(settings.database_url())
    services = build_services(settings, engine, creds)
    app = create_status_app(services, settings=settings, creds=creds)
    server, grpc_port = start_grpc(
        settings, services, creds, interceptors=[GrpcMetrics(app.state.metrics.registry)]
    )
    stop = threading.Event()
    threading.Thread(target=_sweeper, args=(services, stop), daemon=True).start()
    # --port 0: both ports are the OS's pick; otherwise --http-port (0: gRPC port + 1)
    http_sock = bind_listener(settings.host, settings.status_port() if settings.port else 0)
    http_port = int(http_sock.getsockname()[1])
    anchor = _ledger_anchor(settings, services, creds)
    anchor.start()
    log.info(
        "coordinator %s: gRPC (mTLS) on %s:%d, status API on %s://%s:%d",
        creds.org_id,
        settings.host,
        grpc_port,
        "https" if settings.http_tls else "http",
        settings.host,
        http_port,
    )
    announce_ports(settings.data_dir, grpc=grpc_port, http=http_port)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=http_port,
        log_level="warning",
        access_log=False,
        log_config=None,
        **_https_options(settings),
    )
    http = QuietServer(config)
    try:
        http.run(sockets=[http_sock])
    finally:
        stop.set()
        server.stop(grace=2).wait(5)
        anchor.stop()
        engine.dispose()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
