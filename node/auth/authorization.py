"""The authorization-code flow of SMART App Launch 2 (standalone and EHR launch), without HTTP.

1. :func:`parse_authorize_request` checks an ``/auth/authorize`` request: a registered app, one
   of its exact redirect URIs, ``response_type=code``, ``state``, ``aud`` = this node's FHIR base
   URL, a PKCE ``S256`` challenge, and a scope. An EHR launch also sends ``launch`` (a handle
   from :mod:`node.auth.ehr_launch`, live and for this app) with the ``launch`` scope.
2. The user signs in (the route checks the password); :func:`launch_grant` decides what the
   token may hold: the requested scopes that the app may ask for *and* the person may hold (a
   practitioner's ``user/T.p`` also covers ``patient/T.p`` for the patient picked at launch; a
   patient account's scopes are its own compartment's), launch context (``launch/patient``),
   identity (``openid fhirUser``) and ``offline_access``/``online_access``. An EHR launch's
   patient comes from its launch context (consumed at sign-in), never from a picker.
3. :class:`CodeStore` keeps the code by hash: one use, ``code_ttl`` seconds, bound to the app,
   the redirect URI and the PKCE challenge. A second use of a code is refused and revokes the
   refresh tokens issued from it (RFC 6749 §4.1.2).
4. Refresh tokens are rotated on every use; using a rotated one again revokes its family.

The token endpoint (node/auth/routes.py) and the login pages (node/auth/authorize_routes.py)
are thin HTTP layers over this module; another service (the web pages, the consent registry)
can reuse the same pieces.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import Engine, delete, insert, select, update

from node.auth.accounts import Account
from node.auth.ehr_launch import LaunchContexts
from node.auth.grants import covered
from node.auth.login_text import MAX_UI_LOCALES
from node.auth.oauth_errors import OAuthError
from node.auth.pkce import valid_challenge, verifier_matches
from node.auth.smart_apps import NON_RESOURCE_SCOPES, SmartApp, SmartAppStore
from node.auth.tables import authorization_codes, refresh_tokens
from trust.scopes import parse_scopes

__all__ = [
    "AuthorizeRequest",
    "AuthorizeError",
    "LaunchGrant",
    "parse_authorize_request",
    "launch_grant",
    "CodeStore",
    "RefreshStore",
    "needs_patient_pick",
    "redirect_uri_registered",
]

_LOOPBACK = ("127.0.0.1", "localhost")


class AuthorizeError(Exception):
    """An authorize request refused. ``redirect`` is False while the client or redirect URI is
    not known to be good: the error is then shown to the user, never sent to the URI."""

    def __init__(self, error: str, description: str, *, redirect: bool) -> None:
        super().__init__(description)
        self.error, self.description, self.redirect = error, description, redirect


@dataclass(frozen=True)
class AuthorizeRequest:
    app: SmartApp
    redirect_uri: str
    scopes: tuple[str, ...]
    state: str
    code_challenge: str
    aud: str
    nonce: str | None = None
    launch: str | None = None  # EHR launch: the opaque launch-context handle
    ui_locales: str | None = None  # OpenID Connect: the sign-in page's preferred languages

    def as_form(self) -> dict[str, str]:
        """The request as the hidden fields of the login form (checked again on submit)."""
        form = {
            "response_type": "code",
            "client_id": self.app.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": " ".join(self.scopes),
            "state": self.state,
            "aud": self.aud,
            "code_challenge": self.code_challenge,
            "code_challenge_method": "S256",
        }
        if self.nonce:
            form["nonce"] = self.nonce
        if self.launch:
            form["launch"] = self.launch
        if self.ui_locales:
            form["ui_locales"] = self.ui_locales
        return form


@dataclass(frozen=True)
class LaunchGrant:
    """What a signed-in person granted an app: the access token's subject and scopes and the
    launch context. Stored (as JSON) with the code and with each refresh token."""

    subject: str
    role: str
    scopes: tuple[str, ...]
    patient: str | None = None
    fhir_user: str | None = None
    nonce: str | None = None

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "scopes": list(self.scopes)})

    @classmethod
    def from_json(cls, text: str) -> LaunchGrant:
        data = json.loads(text)
        return cls(**{**data, "scopes": tuple(data["scopes"])})

    def has(self, scope: str) -> bool:
        return scope in self.scopes


def parse_authorize_request(
    params: Mapping[str, str],
    apps: SmartAppStore,
    fhir_bases: Iterable[str],
    launches: LaunchContexts | None = None,
) -> AuthorizeRequest:
    client_id = params.get("client_id", "")
    app = apps.get_app(client_id) if client_id else None
    if app is None or not app.active:
        raise AuthorizeError("unauthorized_client", "unknown client_id", redirect=False)
    redirect_uri = params.get("redirect_uri") or (
        app.redirect_uris[0] if len(app.redirect_uris) == 1 else ""
    )
    if not redirect_uri_registered(redirect_uri, app.redirect_uris):
        raise AuthorizeError(
            "invalid_request", "redirect_uri is not registered for this app", redirect=False
        )

    def refuse(error: str, description: str) -> AuthorizeError:
        return AuthorizeError(error, description, redirect=True)

    if params.get("response_type") != "code":
        raise refuse("unsupported_response_type", "response_type must be code")
    state = params.get("state", "")
    if not state or len(state) > 512:
        raise refuse("invalid_request", "state is required (at most 512 characters)")
    aud = params.get("aud", "").rstrip("/")
    if aud not in {b.rstrip("/") for b in fhir_bases}:
        raise refuse("invalid_request", "aud must be this server's FHIR base URL")
    if params.get("code_challenge_method") != "S256":
        raise refuse("invalid_request", "PKCE is required: code_challenge_method must be S256")
    challenge = params.get("code_challenge", "")
    if not valid_challenge(challenge):
        raise refuse("invalid_request", "code_challenge must be a base64url SHA-256 (43 chars)")
    scopes = tuple(dict.fromkeys(params.get("scope", "").split()))
    if not scopes:
        raise refuse("invalid_scope", "scope is required")
    launch = params.get("launch") or None
    if launch is not None:
        if "launch" not in scopes:
            raise refuse("invalid_scope", "an EHR launch (launch=) needs the launch scope")
        if launches is None:
            raise refuse("invalid_request", "EHR launch is not available here")
        try:
            launches.peek(launch, app.client_id)
        except OAuthError as exc:
            raise refuse(exc.error, exc.diagnostics) from None
    nonce = params.get("nonce") or None
    ui_locales = params.get("ui_locales") or None
    if ui_locales is not None and (
        len(ui_locales) > MAX_UI_LOCALES
        or not all(c.isascii() and (c.isalnum() or c in "- ") for c in ui_locales)
    ):
        raise refuse("invalid_request", "ui_locales must be space-separated BCP 47 language tags")
    return AuthorizeRequest(
        app, redirect_uri, scopes, state, challenge, aud, nonce, launch, ui_locales
    )


def redirect_uri_registered(uri: str, registered: Iterable[str]) -> bool:
    """``uri`` is one of the app's redirect URIs, exactly — or, for an ``http://`` loopback URI,
    the same but for the port (RFC 8252 §7.3: a native or local app listens on any free port)."""
    if uri in registered:
        return True
    parts = urlsplit(uri)
    if parts.scheme != "http" or parts.hostname not in _LOOPBACK:
        return False
    try:
        parts.port  # noqa: B018 (a bad port raises)
    except ValueError:
        return False
    portless = urlunsplit(parts._replace(netloc=parts.hostname or ""))
    return portless in registered


def _user_covers(account_scopes: list[str], item: str, is_patient_account: bool) -> bool:
    if covered(item, account_scopes):
        return True
    # A practitioner who may reach every T (user/T.p) may reach one picked patient's T.
    if not is_patient_account and item.startswith("patient/"):
        return covered("user/" + item.removeprefix("patient/"), account_scopes)
    return False


def needs_patient_pick(request: AuthorizeRequest, account: Account) -> bool:
    """A practitioner asked for launch/patient in a standalone launch: the picker must run before
    a code is issued (an EHR launch brings its patient)."""
    return "launch/patient" in request.scopes and account.patient_id is None and not request.launch


def launch_grant(
    request: AuthorizeRequest,
    account: Account,
    account_scopes: Iterable[str],
    *,
    picked_patient: str | None = None,
) -> LaunchGrant:
    """The scopes and context the app gets for this person (OAuthError ``invalid_scope`` when
    no resource scope remains)."""
    mine = list(account_scopes)
    is_patient = account.patient_id is not None
    patient = account.patient_id if is_patient else picked_patient
    granted: list[str] = []
    for item in request.scopes:
        if item in NON_RESOURCE_SCOPES:
            if item in request.app.scopes:
                if item == "launch/patient" and patient is None:
                    continue
                if item == "launch" and not (request.launch and patient):
                    continue  # the launch scope is the EHR launch's context, nothing else
                granted.append(item)
            continue
        parsed = parse_scopes([item])
        if not parsed or parsed[0].context == "system":
            continue  # unknown syntax (e.g. v2 ?query=) or system/: not granted
        if parsed[0].context == "patient" and patient is None:
            continue  # no patient context to apply it to
        if covered(item, request.app.scopes) and _user_covers(mine, item, is_patient):
            granted.append(item)
    if not parse_scopes(granted):
        raise OAuthError("invalid_scope", "none of the requested resource scopes may be granted")
    return LaunchGrant(
        subject=account.username,
        role=account.role,
        scopes=tuple(granted),
        patient=patient
        if "launch" in granted or any(s.startswith("patient/") for s in granted)
        else None,
        fhir_user=account.fhir_user,
        nonce=request.nonce,
    )


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class RedeemedCode:
    grant: LaunchGrant
    family: str  # the code's hash: refresh tokens issued from it carry it


class CodeStore:
    """Authorization codes, by hash, in the node database."""

    def __init__(self, engine: Engine, ttl: int, clock: Callable[[], float] = time.time) -> None:
        self.engine, self.ttl, self.clock = engine, ttl, clock

    def issue(self, request: AuthorizeRequest, grant: LaunchGrant) -> str:
        code = secrets.token_urlsafe(32)
        now = self.clock()
        with self.engine.begin() as conn:
            conn.execute(
                delete(authorization_codes).where(authorization_codes.c.expires_at < now - 3600)
            )
            conn.execute(
                insert(authorization_codes).values(
                    code_sha256=_sha256(code),
                    client_id=request.app.client_id,
                    redirect_uri=request.redirect_uri,
                    grant=grant.to_json(),
                    code_challenge=request.code_challenge,
                    expires_at=now + self.ttl,
                    used_at=None,
                )
            )
        return code

    def redeem(
        self, code: str, client_id: str, redirect_uri: str | None, verifier: str | None
    ) -> RedeemedCode:
        """Check everything first, then mark the code used (once: a concurrent second redeem
        finds it used). A replayed code also revokes the refresh tokens issued from it."""
        family = _sha256(code)
        t = authorization_codes
        with self.engine.connect() as conn:
            row = conn.execute(select(t).where(t.c.code_sha256 == family)).first()
        if row is None or row.client_id != client_id:
            raise OAuthError("invalid_grant", "authorization code is unknown")
        if row.used_at is not None:
            RefreshStore.revoke_family(self.engine, family)
            raise OAuthError(
                "invalid_grant",
                "authorization code was already used (tokens issued from it are revoked)",
            )
        if row.expires_at < self.clock():
            raise OAuthError("invalid_grant", "authorization code has expired")
        if redirect_uri != row.redirect_uri:
            raise OAuthError("invalid_grant", "redirect_uri does not match the authorize request")
        if not verifier:
            raise OAuthError("invalid_request", "code_verifier is required (PKCE)")
        if not verifier_matches(verifier, row.code_challenge):
            raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge")
        with self.engine.begin() as conn:
            marked = conn.execute(
                update(t)
                .where(t.c.code_sha256 == family, t.c.used_at.is_(None))
                .values(used_at=self.clock())
            ).rowcount
        if marked != 1:
            RefreshStore.revoke_family(self.engine, family)
            raise OAuthError("invalid_grant", "authorization code was already used")
        return RedeemedCode(LaunchGrant.from_json(row.grant), family)


class RefreshStore:
    """Refresh tokens, by hash, rotated on use."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self.engine, self.clock = engine, clock

    def issue(self, client_id: str, grant: LaunchGrant, family: str, ttl: int) -> str:
        token = secrets.token_urlsafe(32)
        now = self.clock()
        with self.engine.begin() as conn:
            conn.execute(delete(refresh_tokens).where(refresh_tokens.c.expires_at < now))
            conn.execute(
                insert(refresh_tokens).values(
                    token_sha256=_sha256(token),
                    family=family,
                    client_id=client_id,
                    grant=grant.to_json(),
                    expires_at=now + ttl,
                    revoked=False,
                )
            )
        return token

    def rotate(self, token: str, client_id: str) -> tuple[LaunchGrant, str, float]:
        """Use ``token`` once: (grant, family, expiry). A token used before revokes its family."""
        t = refresh_tokens
        with self.engine.connect() as conn:
            row = conn.execute(select(t).where(t.c.token_sha256 == _sha256(token))).first()
        if row is None or row.client_id != client_id:
            raise OAuthError("invalid_grant", "refresh token is unknown")
        if row.expires_at < self.clock():
            raise OAuthError("invalid_grant", "refresh token has expired")
        with self.engine.begin() as conn:
            used = conn.execute(
                update(t)
                .where(t.c.token_sha256 == row.token_sha256, t.c.revoked.is_(False))
                .values(revoked=True)
            ).rowcount
        if used != 1:
            self.revoke_family(self.engine, row.family)
            raise OAuthError(
                "invalid_grant", "refresh token was already used (its whole family is revoked)"
            )
        return LaunchGrant.from_json(row.grant), row.family, float(row.expires_at)

    @staticmethod
    def revoke_family(engine: Engine, family: str) -> None:
        with engine.begin() as conn:
            conn.execute(
                update(refresh_tokens).where(refresh_tokens.c.family == family).values(revoked=True)
            )
