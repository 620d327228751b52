"""The coordinator's configuration (pydantic-settings, environment prefix ``IPJMS_COORDINATOR_``;
CLI options override). Every default is safe for the local demo."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from servicekit.storage import sqlite_url

__all__ = ["CoordinatorSettings"]


class CoordinatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IPJMS_COORDINATOR_", extra="ignore")

    # State folder (SQLite database coordinator.db by default).
    data_dir: Path = Path("ipjms-data/coordinator")
    host: str = "127.0.0.1"
    # gRPC (mutual TLS) port, and the HTTP status API port (0: gRPC port + 1).
    port: int = 7443
    http_port: int = 0
    # Serve the HTTP status API over HTTPS with the coordinator's TLS certificate (org_dir).
    http_tls: bool = False
    # SQLAlchemy URL; default SQLite in data_dir. postgresql://… lets replicas share one queue.
    db_url: str | None = None
    # The regional CA folder (trust anchor and CRL) and the coordinator's own credentials.
    ca_dir: Path | None = None
    org_dir: Path = Path("ipjms-data/coordinator/credentials")
    # The consent registry; unset → every data-carrying envelope is refused (default deny).
    consent_url: str | None = None
    max_envelope_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    max_ttl_seconds: int = Field(default=30 * 24 * 3600, gt=0)
    rate_per_minute: int = Field(default=600, gt=0)
    # How long a delivered-but-unacknowledged envelope stays leased before redelivery.
    lease_seconds: float = Field(default=30.0, gt=0)
    # How often an idle inbox stream re-checks a shared (PostgreSQL) queue for envelopes other
    # replicas queued or released. On SQLite the queue is this process's own: an idle stream
    # is woken when an envelope is queued or released, and looks again when a lease runs out.
    poll_interval: float = Field(default=1.0, gt=0)
    grpc_workers: int = Field(default=64, gt=1)
    # Signed checkpoints of the audit ledger (trust.ledger_anchor): how often the head is signed
    # with the coordinator's key, and the file outside the database they go to
    # (default <data_dir>/audit-checkpoints.jsonl).
    checkpoint_interval: float = Field(default=60.0, gt=0)
    checkpoint_path: Path | None = None
    # Largest HTTP request body (the model registry's uploads: card + base64 weights, 16 MiB).
    max_http_body_bytes: int = Field(default=16 * 1024 * 1024 + 64 * 1024, gt=0)
    # The authority's federated data folder (its SuperLink's --data-dir, whose runs/*.json the
    # console reads for the quality indicators page); unset → the page says it is not configured.
    console_federated_dir: Path | None = None
    # With the two below as well, an analyst may start a training run from the console
    # (``ipjms fl run`` in the background): the authority's credentials and the registry URL
    # the run publishes its model to (this coordinator's own HTTP API).
    console_authority_dir: Path | None = None
    console_registry_url: str | None = None

    def database_url(self) -> str:
        return self.db_url or sqlite_url(self.data_dir, "coordinator")

    def status_port(self) -> int:
        return self.http_port or self.port + 1
