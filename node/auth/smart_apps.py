"""Registered SMART apps: the clients of the authorization-code flow (SMART App Launch 2).

An app is registered by an operator (``ipjms node app add`` or :meth:`SmartAppStore.add_app`)
with its exact redirect URIs and the scopes it may ask for. A *public* app (a browser or native
app) has no secret and proves itself with PKCE alone; a *confidential* app (a server-side web
app) also gets a secret, generated here and shown once — only its SHA-256 is kept (the secret is
32 random bytes, so a plain hash is as strong as a password hash) — and sends it with HTTP Basic
(``client_secret_basic``) or in the form (``client_secret_post``).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError

from node.auth.accounts import AccountError
from node.auth.tables import smart_apps
from trust.scopes import parse_scopes

__all__ = ["SmartApp", "SmartAppStore", "NON_RESOURCE_SCOPES", "DEFAULT_APP_SCOPES"]

# Scopes that carry no resource rights but ask for launch context, identity or offline access.
NON_RESOURCE_SCOPES = frozenset(
    {"openid", "fhirUser", "profile", "launch", "launch/patient", "offline_access", "online_access"}
)
DEFAULT_APP_SCOPES = (
    "launch launch/patient openid fhirUser offline_access online_access patient/*.rs user/*.cruds"
)
_CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


@dataclass(frozen=True)
class SmartApp:
    client_id: str
    name: str
    redirect_uris: tuple[str, ...]
    scopes: tuple[str, ...]
    confidential: bool
    active: bool = True
    secret_sha256: str | None = None
    launch_url: str | None = None  # EHR launch from the doctor pages (None: not offered there)

    @property
    def launchable(self) -> bool:
        """Offered by the doctor pages' launch button: active, EHR launch allowed, a URL."""
        return self.active and "launch" in self.scopes and self.launch_url is not None

    @property
    def launch_origin(self) -> str | None:
        """``scheme://host[:port]`` of the launch URL (the pages' CSP allows forms to go there)."""
        if self.launch_url is None:
            return None
        parts = urlsplit(self.launch_url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}"

    def secret_matches(self, secret: str) -> bool:
        if self.secret_sha256 is None:
            return False
        digest = hashlib.sha256(secret.encode()).hexdigest()
        return hmac.compare_digest(digest, self.secret_sha256)


def _check_redirect_uri(uri: str, what: str = "redirect URI") -> str:
    parts = urlsplit(uri)
    if parts.fragment or not parts.hostname:
        raise AccountError(f"{what} {uri!r} must be absolute and have no fragment")
    if parts.username or parts.password or any(c.isspace() or c in ";,'\"" for c in uri):
        raise AccountError(
            f"{what} {uri!r} must carry no user info, spaces, quotes, commas or semicolons"
        )
    if parts.scheme == "https":
        return uri
    host = parts.hostname
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if parts.scheme == "http" and loopback:
        return uri
    raise AccountError(f"{what} {uri!r} must be https:// (or http:// to a loopback host)")


def _check_scopes(scopes: str) -> tuple[str, ...]:
    items = tuple(scopes.split())
    if not items:
        raise AccountError("an app needs at least one scope")
    for item in items:
        if item in NON_RESOURCE_SCOPES:
            continue
        parsed = parse_scopes([item])
        if not parsed or parsed[0].context == "system":
            raise AccountError(
                f"app scope {item!r} is neither a patient/ or user/ resource scope nor one of "
                f"{', '.join(sorted(NON_RESOURCE_SCOPES))}"
            )
    return items


class SmartAppStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add_app(
        self,
        client_id: str,
        redirect_uris: list[str] | tuple[str, ...],
        *,
        name: str | None = None,
        scopes: str = DEFAULT_APP_SCOPES,
        confidential: bool = False,
        launch_url: str | None = None,
    ) -> tuple[SmartApp, str | None]:
        """Register an app; returns it and, for a confidential app, its secret (shown once).
        ``launch_url``: where the doctor pages send the browser for an EHR launch (the app
        needs the ``launch`` scope for it)."""
        if not _CLIENT_ID.match(client_id):
            raise AccountError("client id must be 1-128 letters, digits or . _ : -")
        uris = tuple(_check_redirect_uri(u) for u in redirect_uris)
        if not uris:
            raise AccountError("an app needs at least one redirect URI")
        items = _check_scopes(scopes)
        if launch_url is not None:
            launch_url = _check_redirect_uri(launch_url, "launch URL")
            if "launch" not in items:
                raise AccountError("a launch URL needs the app to have the launch scope")
        secret = secrets.token_urlsafe(32) if confidential else None
        label = (name or client_id)[:200]
        digest = hashlib.sha256(secret.encode()).hexdigest() if secret else None
        row = {
            "client_id": client_id,
            "name": label,
            "redirect_uris": " ".join(uris),
            "scopes": " ".join(items),
            "secret_sha256": digest,
            "active": True,
            "created_at": datetime.now(UTC),
            "launch_url": launch_url,
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(smart_apps).values(**row))
        except IntegrityError:
            raise AccountError(f"app {client_id!r} already exists") from None
        app = SmartApp(client_id, label, uris, items, confidential, True, digest, launch_url)
        return app, secret

    def get_app(self, client_id: str) -> SmartApp | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(smart_apps).where(smart_apps.c.client_id == client_id)
            ).first()
        return None if row is None else _app(row)

    def launchable_apps(self) -> list[SmartApp]:
        """The apps the doctor pages offer to launch for the patient in view, by name."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(smart_apps).where(smart_apps.c.launch_url.is_not(None))
            ).all()
        return sorted((a for a in map(_app, rows) if a.launchable), key=lambda a: a.name)


def _app(row: Any) -> SmartApp:
    return SmartApp(
        row.client_id,
        row.name,
        tuple(row.redirect_uris.split()),
        tuple(row.scopes.split()),
        row.secret_sha256 is not None,
        bool(row.active),
        row.secret_sha256,
        row.launch_url,
    )
