"""A node's configuration: ``NodeSettings``.

Sources, highest priority first: explicit values (CLI options), environment variables with the
prefix ``IPJMS_NODE_`` (e.g. ``IPJMS_NODE_MLLP_PORT=2575``), then ``<data_dir>/node.toml``
(written by ``ipjms node init``), then the defaults below — each safe for a local demo.

Other areas add their own fields here with a small edit (e.g. ``consent_url``,
``coordinator_address``); every field is documented where it is declared.
"""

from __future__ import annotations

from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from servicekit.storage import sqlite_url

__all__ = ["NodeSettings", "load_settings", "write_node_toml", "NODE_TOML", "NotInitialised"]

NODE_TOML = "node.toml"
# The fields ``ipjms node init`` writes to node.toml (the node's identity and where its data lives).
_TOML_FIELDS = ("org_id", "name", "level", "db_url", "port", "host")
_toml_file: ContextVar[Path | None] = ContextVar("_toml_file", default=None)


class NotInitialised(Exception):
    """The data directory holds no node.toml: run ``ipjms node init`` first."""


class NodeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IPJMS_NODE_", extra="ignore")

    # Identity: the organisation this node belongs to (matches its PKI certificate subject).
    org_id: str = "org-local"
    name: str = "Local node"
    level: Literal["tertiary", "county", "community"] = "community"
    # Where the node keeps its state (database, keys, logs).
    data_dir: Path = Path("ipjms-data/node")
    # HTTP listener.
    host: str = "127.0.0.1"
    port: int = 8080
    # The URL clients use to reach this node (token audience of client assertions, paging links
    # are built from the request). Default: http://{host}:{port}.
    public_url: str | None = None
    # SQLAlchemy URL; default: SQLite file <data_dir>/node.db. postgresql://… for production.
    db_url: str | None = None
    # Requests with a larger body are refused with 413 before anything is stored.
    max_request_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    # Lifetime of access tokens handed out by POST /auth/token, seconds (backend clients ≤ 300).
    token_ttl: int = Field(default=900, gt=0, le=3600)
    # HMAC key linking patients across nodes by pseudonym; default <data_dir>/linkage.key.
    linkage_key_path: Path | None = None
    # HL7 v2 MLLP listener port; None = no listener.
    mllp_port: int | None = None
    # Default page size of searches without _count.
    default_page_size: int = Field(default=50, gt=0, le=1000)
    # Exchange (node/exchange): the coordinator's gRPC address host:port (None = exchange off),
    # the regional CA folder (its CRL is honoured when verifying peers; optional), this
    # organisation's PKI credentials (default <data_dir>/credentials), the consent registry URL.
    coordinator_address: str | None = None
    ca_dir: Path | None = None
    org_credentials_dir: Path | None = None
    consent_url: str | None = None
    # Care management (node/care): the care engine as a background worker (off by default: it writes
    # CarePlans for every enrolling Condition), the account whose Practitioner is responsible when
    # an enrolling Condition names no local Practitioner, and how often the scheduler looks for
    # missing readings, overdue follow-ups and unacknowledged alerts.
    care_enabled: bool = False
    care_responsible_user: str = "care-lead"
    care_tick_seconds: float = Field(default=60.0, gt=0)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml = _toml_file.get()
        if toml is not None and toml.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
        return tuple(sources)

    # --- derived locations (one place for each) ---

    @property
    def database_url(self) -> str:
        return self.db_url or sqlite_url(self.data_dir, "node")

    @property
    def signing_key_path(self) -> Path:
        return self.data_dir / "keys" / "token-signing.pem"

    @property
    def linkage_key_file(self) -> Path:
        return self.linkage_key_path or self.data_dir / "linkage.key"

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def token_issuer(self) -> str:
        """``iss`` of this node's access tokens."""
        return f"urn:ipjms:node:{self.org_id}"

    @property
    def token_audience(self) -> str:
        """``aud`` of this node's access tokens: its own FHIR API and nothing else."""
        return f"urn:ipjms:node:{self.org_id}:fhir"


def load_settings(
    data_dir: Path | str | None = None, *, require_init: bool = False, **overrides: Any
) -> NodeSettings:
    """Settings of the node in ``data_dir`` (node.toml there, then env, then ``overrides``).

    ``overrides`` whose value is None are ignored, so CLI options can be passed straight through.
    """
    explicit = {k: v for k, v in overrides.items() if v is not None}
    if data_dir is None:
        data_dir = NodeSettings().data_dir  # from env or default
    data_dir = Path(data_dir).resolve()
    toml = data_dir / NODE_TOML
    if require_init and not toml.is_file():
        raise NotInitialised(
            f"{data_dir} is not an initialised node (no {NODE_TOML}); run `ipjms node init` first"
        )
    token = _toml_file.set(toml)
    try:
        return NodeSettings(data_dir=data_dir, **explicit)
    finally:
        _toml_file.reset(token)


def write_node_toml(settings: NodeSettings) -> Path:
    """Write the node's identity and database location to ``<data_dir>/node.toml``."""
    import tomli_w

    values = {
        name: (str(v) if isinstance(v, Path) else v)
        for name in _TOML_FIELDS
        if (v := getattr(settings, name)) is not None
    }
    path = settings.data_dir / NODE_TOML
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# IPJMS node settings (environment variables IPJMS_NODE_<FIELD> override these)\n"
        + tomli_w.dumps(values)
    )
    return path
