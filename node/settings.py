"""A node's configuration: ``NodeSettings``, one section per feature.

Sources, highest priority first: explicit values (CLI options), environment variables, then
``<data_dir>/node.toml`` (written by ``ipjms node init``), then the defaults below — each safe for
a local demo.

The node's own fields (identity, listener, database) are flat: ``IPJMS_NODE_<FIELD>``, e.g.
``IPJMS_NODE_PORT=8081``. Each feature has its own section, a nested model:
``IPJMS_NODE_<SECTION>__<FIELD>`` in the environment (e.g.
``IPJMS_NODE_EXCHANGE__COORDINATOR_ADDRESS=coordinator:7443``) and ``[section]`` in node.toml.
A new feature adds one section model here and one field on ``NodeSettings``.

The flat names used before the sections existed (``IPJMS_NODE_COORDINATOR_ADDRESS``,
``IPJMS_NODE_CONSENT_URL``, ``IPJMS_NODE_CA_DIR``, ``IPJMS_NODE_ORG_CREDENTIALS_DIR``,
``IPJMS_NODE_MLLP_PORT``, ``IPJMS_NODE_MLLP_HOST``, ``IPJMS_NODE_CARE_ENABLED``, …; the same keys
at the top of node.toml, and keyword arguments) still work: :data:`LEGACY_KEYS` maps each onto
its section. Where both are given in one source, the sectioned name wins.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from protos.alerting_floor import DEFAULT_MIN_AUROC, DEFAULT_MIN_EVENTS
from servicekit.storage import sqlite_url

__all__ = [
    "NodeSettings",
    "PkiSettings",
    "ConsentSettings",
    "ExchangeSettings",
    "Hl7Settings",
    "CareSettings",
    "OAuthSettings",
    "ApiSettings",
    "LEGACY_KEYS",
    "nest_legacy_keys",
    "load_settings",
    "write_node_toml",
    "NODE_TOML",
    "NotInitialised",
]

NODE_TOML = "node.toml"
ENV_PREFIX = "IPJMS_NODE_"
# The fields ``ipjms node init`` writes to node.toml (the node's identity and where its data lives).
_TOML_FIELDS = ("org_id", "name", "level", "db_url", "port", "host")
_toml_file: ContextVar[Path | None] = ContextVar("_toml_file", default=None)


class NotInitialised(Exception):
    """The data directory holds no node.toml: run ``ipjms node init`` first."""


class _Section(BaseModel):
    # A misspelt setting is an error at start-up, not a silently ignored value.
    model_config = ConfigDict(extra="forbid", frozen=True)


class PkiSettings(_Section):
    """This organisation's place in the regional PKI (needed when a consent registry or a
    coordinator is configured)."""

    # Its credentials (certificates, signing and encryption keys); default <data_dir>/credentials.
    credentials_dir: Path | None = None
    # The regional CA folder: its revocation list is honoured when verifying peers (optional).
    ca_dir: Path | None = None


class ConsentSettings(_Section):
    """The regional consent registry: patient enrolment and every disclosure decision."""

    # Its base URL; None = no registry: enrolment answers 503, every disclosure is refused.
    url: str | None = None
    # The region's patient sign-in (node/auth/regional.py): RFC 7638 thumbprints of the
    # registry's patient-token keys this node trusts (``ipjms consent key-pin``). Required when
    # ``url`` is plain http; over https the registry's certificate is verified instead.
    patient_key_pins: tuple[str, ...] = ()
    # Accept the registry's patient tokens at all (the region's one patient login).
    patient_login: bool = True
    # The registry's organisation id: consent decisions (the ones this node receives inside
    # envelopes, and its own) are trusted only when signed by that organisation's CA-issued
    # signing certificate — never by a key fetched over the registry's URL. None = JWKS as
    # served (logged as a warning).
    registry_org: str | None = None


class ExchangeSettings(_Section):
    """The regional exchange (node/exchange): referrals, consultations, record pulls."""

    # The coordinator's gRPC address host:port; None = exchange off.
    coordinator_address: str | None = None
    # The coordinator's organisation id: the TLS handshake then accepts only that
    # organisation's CA-issued certificate (trust.tls.pin_server_org), not any certificate of
    # the region valid for the address. None = host-name check only (logged as a warning).
    coordinator_org: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.coordinator_address)


class Hl7Settings(_Section):
    """The HL7 v2 feed (node/feeds/hl7v2): an MLLP listener."""

    # Its port; None = no listener, 0 = any free one (announced as ``mllp`` in the data dir's
    # bound-ports.json). Host: default the node's HTTP ``host``.
    mllp_port: int | None = Field(default=None, ge=0, lt=65536)
    mllp_host: str | None = None


class CareSettings(_Section):
    """Care management (node/care): the care engine, background work of one worker."""

    # Off by default: once on, it writes CarePlans for every enrolling Condition.
    enabled: bool = False
    # The account whose Practitioner is responsible when an enrolling Condition names no local
    # Practitioner.
    responsible_user: str = "care-lead"
    # How often the scheduler looks for missing readings, overdue follow-ups and unacknowledged
    # alerts, seconds.
    tick_seconds: float = Field(default=60.0, gt=0)
    # Run the worker in its own OS process (default), off the API's interpreter: the rules never
    # slow a write. False: a thread of the background worker process (as the tests' CareWorker).
    worker_process: bool = True
    # How often the worker process reads the commit log for commits it was not woken for,
    # seconds: those of another ``serve --workers`` process or an offline command (a commit in
    # the process that runs the worker wakes it at once, node/care/worker_process.py). 0.25 s
    # keeps the doctor's alert within the second of issue 14 for those too.
    poll_seconds: float = Field(default=0.25, gt=0, le=60)
    # Tests and drills only: the care clock runs this many seconds ahead of real time (due dates,
    # escalation, absence). Logged as a warning at start-up when not zero.
    clock_offset_seconds: float = 0.0
    # The risk-model gate (node/care/model_gate.py): a federated model's RiskAssessments raise
    # alerts only when its card in the coordinator's model registry shows a federated AUROC of
    # at least ``model_min_auroc`` over at least ``model_min_events`` outcome events; otherwise
    # they are stored labelled not for clinical use. The registry's base URL (the coordinator's
    # HTTP API, e.g. https://coordinator:8443); None = no card can be read, so no model alerts.
    model_registry_url: str | None = None
    # Defaults: the region's floor, each figure with its source in protos/alerting_floor.py
    # (0.70 — Hosmer, Lemeshow & Sturdivant 2013 §5.2.4; 100 events — Collins, Ogundimu &
    # Altman 2016). The clinical lead may raise them, never lower them (a value below the floor
    # is refused at start-up); the authority console shows every model against these defaults.
    model_min_auroc: float = Field(default=DEFAULT_MIN_AUROC, ge=DEFAULT_MIN_AUROC, le=1.0)
    model_min_events: int = Field(default=DEFAULT_MIN_EVENTS, ge=DEFAULT_MIN_EVENTS)
    # How long a fetched verdict is reused before the card is read again, seconds.
    model_card_ttl_seconds: float = Field(default=300.0, gt=0)


class OAuthSettings(_Section):
    """The node's OAuth 2.0 / SMART App Launch authorization server (node/auth)."""

    # Lifetime of an authorization code, seconds (RFC 6749 recommends at most 10 minutes).
    code_ttl: int = Field(default=60, gt=0, le=600)
    # Lifetime of a refresh token granted with offline_access / online_access, seconds.
    offline_refresh_ttl: int = Field(default=30 * 24 * 3600, gt=0)
    online_refresh_ttl: int = Field(default=12 * 3600, gt=0)


class ApiSettings(_Section):
    """The FHIR REST API (node/api)."""

    # Browser origins (scheme://host[:port]) allowed to call the API (CORS); empty = none.
    cors_origins: list[str] = Field(default_factory=list)
    # Deleting a resource that others still reference: refused with 409 naming them (as HAPI
    # does) when True; allowed when False.
    delete_referential_integrity: bool = True


class PortalSettings(_Section):
    """The node's web pages (node/portal): doctors' and patients' apps under ``/app``."""

    # A session ends after this long without a request (and always when its token expires).
    idle_seconds: float = Field(default=900.0, gt=0)


# Flat names of earlier versions → (section, field). Read from env, node.toml and keywords.
LEGACY_KEYS: dict[str, tuple[str, str]] = {
    "org_credentials_dir": ("pki", "credentials_dir"),
    "ca_dir": ("pki", "ca_dir"),
    "consent_url": ("consent", "url"),
    "consent_registry_org": ("consent", "registry_org"),
    "coordinator_address": ("exchange", "coordinator_address"),
    "coordinator_org": ("exchange", "coordinator_org"),
    "mllp_port": ("hl7", "mllp_port"),
    "mllp_host": ("hl7", "mllp_host"),
    "care_enabled": ("care", "enabled"),
    "care_responsible_user": ("care", "responsible_user"),
    "care_tick_seconds": ("care", "tick_seconds"),
}


def nest_legacy_keys(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with each flat legacy key moved into its section; a value already given in
    the section wins over the flat one."""
    out = {k: v for k, v in values.items() if k not in LEGACY_KEYS}
    for old, (section, field) in LEGACY_KEYS.items():
        if old not in values:
            continue
        current = out.get(section)
        if isinstance(current, BaseModel):
            current = current.model_dump(exclude_unset=True)
        merged = dict(current or {})
        merged.setdefault(field, values[old])
        out[section] = merged
    return out


class _Nested(PydanticBaseSettingsSource):
    """Another source's values with the legacy flat keys moved into their sections."""

    def __init__(self, settings_cls: type[BaseSettings], inner: PydanticBaseSettingsSource):
        super().__init__(settings_cls)
        self.inner = inner

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self.inner.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        return nest_legacy_keys(self.inner())


class _LegacyEnv(PydanticBaseSettingsSource):
    """``IPJMS_NODE_<LEGACY KEY>`` environment variables (case-insensitive, like the others)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        env = {k.upper(): v for k, v in os.environ.items()}
        names = {old: f"{ENV_PREFIX}{old.upper()}" for old in LEGACY_KEYS}
        return nest_legacy_keys({old: env[name] for old, name in names.items() if name in env})


class NodeSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore"
    )

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
    # The pseudonymisation authority (``ipjms pseudonym serve``, issue 23): when set, patient
    # pseudonyms come from its RFC 9497 OPRF (trust/oprf_client.py) and the node holds, and
    # creates, no linkage key — nothing in its state can test a guessed identifier.
    pseudonym_url: str | None = None
    # Without ``pseudonym_url`` (older regions, tests): the region's shared HMAC key linking
    # patients by pseudonym; default <data_dir>/linkage.key. Whoever copies it can reverse
    # any pseudonym of the region by brute force over the national-id space.
    linkage_key_path: Path | None = None
    # Default page size of searches without _count.
    default_page_size: int = Field(default=50, gt=0, le=1000)

    # --- one section per feature (IPJMS_NODE_<SECTION>__<FIELD>, [section] in node.toml) ---
    pki: PkiSettings = PkiSettings()
    consent: ConsentSettings = ConsentSettings()
    exchange: ExchangeSettings = ExchangeSettings()
    hl7: Hl7Settings = Hl7Settings()
    care: CareSettings = CareSettings()
    oauth: OAuthSettings = OAuthSettings()
    api: ApiSettings = ApiSettings()
    portal: PortalSettings = PortalSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [
            _Nested(settings_cls, init_settings),
            env_settings,
            _LegacyEnv(settings_cls),
        ]
        toml = _toml_file.get()
        if toml is not None and toml.is_file():
            sources.append(
                _Nested(settings_cls, TomlConfigSettingsSource(settings_cls, toml_file=toml))
            )
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
    def credentials_dir(self) -> Path:
        """The PKI credentials folder: ``pki.credentials_dir``, else <data_dir>/credentials."""
        return self.pki.credentials_dir or self.data_dir / "credentials"

    @property
    def needs_credentials(self) -> bool:
        """A consent registry or a coordinator is configured: both are reached as this
        organisation, with its credentials."""
        return bool(self.consent.url) or self.exchange.enabled or bool(self.pseudonym_url)

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def token_issuer(self) -> str:
        """``iss`` of this node's access tokens."""
        return f"urn:ipjms:node:{self.org_id}"

    @property
    def fhir_base_url(self) -> str:
        """The FHIR base URL clients are told (SMART ``aud``, CapabilityStatement)."""
        return f"{self.base_url}/fhir"

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
        "# IPJMS node settings (environment variables IPJMS_NODE_<FIELD> and\n"
        "# IPJMS_NODE_<SECTION>__<FIELD> override these)\n" + tomli_w.dumps(values)
    )
    return path
