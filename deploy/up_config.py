"""``network.toml`` for ``ipjms up``: the regional topology and its PostgreSQL server.

Pure parsing and validation (no I/O beyond reading the file): every problem is a
:class:`ConfigError` whose message names the offending key. See deploy/network.example.toml.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["ConfigError", "NodeSpec", "NetworkConfig", "load_config", "parse_config"]

LEVELS = ("tertiary", "county", "community")
PROFILES = ("tertiary", "community")
_ORG = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")
_PREFIX = re.compile(r"^[a-z_][a-z0-9_]{0,30}$")
_TOP_KEYS = {"postgres", "node", "tls"}
_PG_KEYS = {"server", "prefix", "password_file", "managed"}
_TLS_KEYS = {"enabled"}
# The URL of a managed server is only known once it runs (its port); until then this stands in.
MANAGED_SERVER = "postgresql://ipjms@127.0.0.1:0/postgres"
_NODE_KEYS = {"org", "name", "level", "profile"}


class ConfigError(ValueError):
    """network.toml is unusable; the message names the key."""


@dataclass(frozen=True)
class NodeSpec:
    org: str
    name: str
    level: str
    profile: str  # seed profile used by the story

    def as_tuple(self) -> tuple[str, str, str, str]:
        """The (org id, name, level, profile) tuple the demo chapters iterate."""
        return (self.org, self.name, self.level, self.profile)


@dataclass(frozen=True)
class NetworkConfig:
    server_url: str  # postgresql://user@host:port/db — a database the role may connect to
    prefix: str
    password_file: Path | None
    nodes: tuple[NodeSpec, ...]
    # ``ipjms up`` runs its own TLS-only PostgreSQL (deploy/local_postgres.py)
    managed: bool = False
    # HTTPS on every node, the registry and the coordinator's status API (regional PKI)
    tls: bool = False

    def services(self) -> list[str]:
        """Every service that owns a database: consent, coordinator, node-<org>."""
        return ["consent", "coordinator", *(f"node-{n.org}" for n in self.nodes)]

    def database_name(self, service: str) -> str:
        return (self.prefix + service).replace("-", "_").replace(".", "_")

    def database_url(self, service: str) -> str:
        """The server URL with its database replaced by the service's own (its query — TLS
        parameters such as ``sslmode=verify-full`` — kept)."""
        parts = urlsplit(self.server_url)
        return urlunsplit(parts._replace(path=f"/{self.database_name(service)}"))

    def with_server(self, server_url: str, password_file: Path | None) -> NetworkConfig:
        """The same network on another server (a managed server once it runs)."""
        from dataclasses import replace

        return replace(self, server_url=server_url, password_file=password_file)

    def check_story(self) -> None:
        """The demo story needs one tertiary hospital and two community clinics."""
        levels = [n.level for n in self.nodes]
        if "tertiary" not in levels or levels.count("community") < 2:
            raise ConfigError(
                "node: --run-story needs at least one [[node]] with level = 'tertiary' and two "
                "with level = 'community'"
            )


def _unknown(table: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        raise ConfigError(f"{where}{extra[0]}: unknown key (allowed: {', '.join(sorted(allowed))})")


def _string(table: dict[str, Any], key: str, where: str, *, required: bool = True) -> str | None:
    value = table.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{where}{key}: missing (required)")
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}{key}: must be a non-empty string")
    return value.strip()


def parse_config(doc: dict[str, Any], *, base_dir: Path = Path(".")) -> NetworkConfig:
    _unknown(doc, _TOP_KEYS, "")
    pg = doc.get("postgres")
    if not isinstance(pg, dict):
        raise ConfigError("postgres: missing [postgres] table (with server = 'postgresql://…')")
    _unknown(pg, _PG_KEYS, "postgres.")
    managed = pg.get("managed", False)
    if not isinstance(managed, bool):
        raise ConfigError("postgres.managed: must be true or false")
    if managed and "server" in pg:
        raise ConfigError("postgres.server: not with managed = true (ipjms up runs the server)")
    if managed and "password_file" in pg:
        raise ConfigError("postgres.password_file: not with managed = true (generated)")
    server = MANAGED_SERVER if managed else _string(pg, "server", "postgres.")
    assert server is not None
    parts = urlsplit(server)
    if parts.scheme not in ("postgresql", "postgresql+psycopg") or not parts.hostname:
        raise ConfigError(
            f"postgres.server: expected postgresql://USER@HOST:PORT/DATABASE, got {parts.scheme!r}"
            " URL"
        )
    if parts.password:
        raise ConfigError("postgres.server: put no password in the URL; use postgres.password_file")
    prefix = _string(pg, "prefix", "postgres.", required=False) or "ipjms_"
    if not _PREFIX.match(prefix):
        raise ConfigError("postgres.prefix: lower-case letters, digits and _ (≤ 31 characters)")
    pw = _string(pg, "password_file", "postgres.", required=False)
    password_file = (base_dir / pw).resolve() if pw else None
    if password_file is not None and not password_file.is_file():
        raise ConfigError(f"postgres.password_file: {password_file} does not exist")

    raw_nodes = doc.get("node")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise ConfigError("node: at least one [[node]] entry is required")
    nodes: list[NodeSpec] = []
    for i, raw in enumerate(raw_nodes):
        where = f"node[{i}]."
        if not isinstance(raw, dict):
            raise ConfigError(f"node[{i}]: must be a table ([[node]])")
        _unknown(raw, _NODE_KEYS, where)
        org = _string(raw, "org", where)
        name = _string(raw, "name", where)
        level = _string(raw, "level", where)
        assert org is not None and name is not None and level is not None
        if not _ORG.match(org):
            raise ConfigError(f"{where}org: {org!r} must be lower-case letters, digits, '.', '-'")
        if level not in LEVELS:
            raise ConfigError(f"{where}level: {level!r} is not one of {', '.join(LEVELS)}")
        profile = _string(raw, "profile", where, required=False) or (
            "tertiary" if level == "tertiary" else "community"
        )
        if profile not in PROFILES:
            raise ConfigError(f"{where}profile: {profile!r} is not one of {', '.join(PROFILES)}")
        if any(n.org == org for n in nodes):
            raise ConfigError(f"{where}org: {org!r} appears twice")
        nodes.append(NodeSpec(org, name, level, profile))
    tls_table = doc.get("tls", {})
    if not isinstance(tls_table, dict):
        raise ConfigError("tls: must be a table ([tls] enabled = true)")
    _unknown(tls_table, _TLS_KEYS, "tls.")
    tls = tls_table.get("enabled", False)
    if not isinstance(tls, bool):
        raise ConfigError("tls.enabled: must be true or false")
    if tls and not managed and "sslmode=verify-full" not in (parts.query or ""):
        raise ConfigError(
            "postgres.server: with [tls] enabled the database hop is TLS too — add "
            "?sslmode=verify-full&sslrootcert=CA_FILE, or set managed = true"
        )
    config = NetworkConfig(server, prefix, password_file, tuple(nodes), managed, tls)
    for service in config.services():
        if len(config.database_name(service)) > 63:
            raise ConfigError(
                f"postgres.prefix: database name {config.database_name(service)!r} is longer "
                "than PostgreSQL's 63 characters (shorten the prefix or the org id)"
            )
    return config


def load_config(path: Path) -> NetworkConfig:
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return parse_config(doc, base_dir=path.parent)
