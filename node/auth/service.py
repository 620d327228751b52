"""Token grants and token verification for one node.

- password grant: an account's username + password → access token with its role's scopes;
- client_credentials grant: a registered backend client proves itself with a signed JWT client
  assertion (SMART Backend Services: ``iss`` = ``sub`` = client id, ``aud`` = token URL, unique
  ``jti``, ``exp`` at most 5 minutes ahead, ``iat`` optional; RS384, ES384 or ES256 with the
  registered key or one from the client's JWKS URL) → access token (≤ 300 s), ``system/…`` scopes;
- authorization_code and refresh_token grants of SMART App Launch (node/auth/authorization.py):
  a registered app redeems a one-time code with its PKCE verifier → access token, ``id_token``
  (``openid``), refresh token (``offline_access``/``online_access``), launch context;
- verification of the node's own access tokens → :class:`Principal`.

Login failures go to ``failure_sinks`` (metrics and a PHI-free log line are wired by the app; the
audit ledger adds its own sink there). A failure never says whether the username exists.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import jwt
from sqlalchemy import Engine

from node.auth.accounts import AccountStore
from node.auth.authorization import CodeStore, LaunchGrant, RefreshStore
from node.auth.client_keys import (
    CLIENT_ASSERTION_ALGORITHMS,
    ClientKeyError,
    JwksCache,
    algorithms_for,
)
from node.auth.ehr_launch import LaunchContexts
from node.auth.grants import ScopeRefused, grant_scopes
from node.auth.oauth_errors import OAuthError
from node.auth.principal import Principal
from node.auth.regional import RegionalPatientTokens
from node.auth.replay import DbReplayCache
from node.auth.roles import ROLE_SCOPES
from node.auth.smart_apps import SmartApp, SmartAppStore
from node.settings import NodeSettings
from servicekit.outcome import BadRequest, Unauthorized
from trust.login_throttle import AccountLocked
from trust.tokens import (
    ReplayCache,
    SigningKey,
    TokenError,
    TokenIssuer,
    TokenVerifier,
    load_or_create_signing_key,
)

__all__ = ["AuthService", "LoginFailure", "TokenGrant", "CLIENT_ASSERTION_TYPE", "BACKEND_MAX_TTL"]

log = logging.getLogger("ipjms.node.auth")

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
BACKEND_MAX_TTL = 300
# SMART Backend Services: an assertion may live at most five minutes.
ASSERTION_MAX_LIFETIME = 300


@dataclass(frozen=True)
class LoginFailure:
    """One refused token request. Holds no PHI: the subject is only given for known accounts /
    registered clients, and ``reason`` is a fixed code."""

    grant_type: str
    # bad_credentials | inactive | bad_assertion | replayed | unknown_client | scope |
    # bad_secret | bad_code | locked (too many failures: trust.login_throttle)
    reason: str
    known_subject: str | None = None


@dataclass(frozen=True)
class TokenGrant:
    access_token: str
    expires_in: int
    scope: str
    patient: str | None = None
    id_token: str | None = None
    refresh_token: str | None = None

    def response(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "scope": self.scope,
        }
        if self.patient:
            body["patient"] = self.patient  # SMART launch context
            body["need_patient_banner"] = True
        if self.id_token:
            body["id_token"] = self.id_token
        if self.refresh_token:
            body["refresh_token"] = self.refresh_token
        return body


@dataclass
class AuthService:
    settings: NodeSettings
    accounts: AccountStore
    key: SigningKey
    failure_sinks: list[Callable[[LoginFailure], None]] = field(default_factory=list)
    assertion_replay: ReplayCache = field(default_factory=ReplayCache)
    jwks: JwksCache = field(default_factory=JwksCache)
    # The region's patient sign-in (tokens of the consent registry), when a registry is set.
    regional_patients: RegionalPatientTokens | None = None

    @classmethod
    def for_node(cls, settings: NodeSettings, engine: Engine) -> AuthService:
        return cls(
            settings,
            AccountStore(engine),
            load_or_create_signing_key(settings.signing_key_path),
            assertion_replay=DbReplayCache(engine),
        )

    @property
    def apps(self) -> SmartAppStore:
        return SmartAppStore(self.accounts.engine)

    @property
    def codes(self) -> CodeStore:
        return CodeStore(self.accounts.engine, self.settings.oauth.code_ttl)

    @property
    def launches(self) -> LaunchContexts:
        return LaunchContexts(self.accounts.engine)

    @property
    def refresh_tokens(self) -> RefreshStore:
        return RefreshStore(self.accounts.engine)

    @property
    def issuer(self) -> TokenIssuer:
        return TokenIssuer(self.settings.token_issuer, self.key, self.settings.token_ttl)

    @property
    def verifier(self) -> TokenVerifier:
        return TokenVerifier(
            self.settings.token_issuer,
            self.settings.token_audience,
            {self.key.kid: self.key.public_key},
        )

    def record_failure(self, failure: LoginFailure) -> None:
        """Hand a refused sign-in to the failure sinks (metrics, log line, audit ledger)."""
        for sink in self.failure_sinks:
            try:
                sink(failure)
            except Exception:  # a broken sink must not turn a 401 into a 500
                log.exception("login-failure sink failed")

    def _fail(self, failure: LoginFailure, message: str) -> Unauthorized:
        self.record_failure(failure)
        return Unauthorized(message)

    # --- grants ---

    def password_grant(self, username: str, password: str, scope: str | None) -> TokenGrant:
        if not username or not password:
            raise BadRequest("password grant needs username and password")
        try:
            account = self.accounts.authenticate(username, password)
        except AccountLocked:
            self.record_failure(LoginFailure("password", "locked"))
            raise
        if account is None:
            known = self.accounts.get_user(username)
            raise self._fail(
                LoginFailure(
                    "password",
                    "inactive" if known and not known.active else "bad_credentials",
                    known.username if known else None,
                ),
                "invalid username or password",
            )
        try:
            scopes = grant_scopes(ROLE_SCOPES[account.role], scope)
        except ScopeRefused as exc:
            raise BadRequest(f"invalid_scope: {exc}") from None
        claims: dict[str, Any] = {"role": account.role, "org": self.settings.org_id}
        if account.patient_id:
            claims["patient"] = account.patient_id
        ttl = self.settings.token_ttl
        token = self.issuer.issue(
            account.username, self.settings.token_audience, scopes=scopes, ttl=ttl, claims=claims
        )
        return TokenGrant(token, ttl, " ".join(scopes), account.patient_id)

    def client_credentials_grant(
        self,
        assertion_type: str | None,
        assertion: str | None,
        scope: str | None,
        token_urls: Iterable[str],
    ) -> TokenGrant:
        if assertion_type != CLIENT_ASSERTION_TYPE or not assertion:
            raise BadRequest(
                f"client_credentials needs client_assertion_type={CLIENT_ASSERTION_TYPE} "
                "and a client_assertion"
            )
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            raise self._fail(
                LoginFailure("client_credentials", "bad_assertion"), "malformed client assertion"
            ) from None
        client_id = str(unverified.get("iss", ""))
        client = self.accounts.get_client(client_id) if client_id else None
        if client is None or not client.active:
            raise self._fail(
                LoginFailure("client_credentials", "unknown_client"), "unknown backend client"
            )
        if unverified.get("sub") != client_id:
            raise self._fail(
                LoginFailure("client_credentials", "bad_assertion", client_id),
                "client assertion sub must equal iss (the client id)",
            )
        audience = str(unverified.get("aud", ""))
        if audience not in {u.rstrip("/") for u in token_urls}:
            raise self._fail(
                LoginFailure("client_credentials", "bad_assertion", client_id),
                "client assertion audience must be this node's token URL",
            )
        kid = header.get("kid")
        try:
            if client.jwks_url:
                key = self.jwks.key(client.jwks_url, None if kid is None else str(kid))
            else:
                key = client.public_key
        except ClientKeyError as exc:
            raise self._fail(
                LoginFailure("client_credentials", "bad_assertion", client_id), str(exc)
            ) from None
        verifier = TokenVerifier(
            client_id,
            audience,
            {str(kid): key},
            replay_cache=self.assertion_replay,
            max_lifetime=ASSERTION_MAX_LIFETIME,
            algorithms=tuple(a for a in algorithms_for(key) if a in CLIENT_ASSERTION_ALGORITHMS),
            require_iat=False,  # SMART Backend Services: iat is optional
        )
        try:
            verifier.verify(assertion)
        except TokenError as exc:
            reason = "replayed" if "replayed" in str(exc) else "bad_assertion"
            raise self._fail(
                LoginFailure("client_credentials", reason, client_id),
                f"client assertion refused: {exc}",
            ) from None
        try:
            scopes = grant_scopes(client.scopes, scope, strict=True)
        except ScopeRefused as exc:
            raise BadRequest(f"invalid_scope: {exc}") from None
        ttl = min(self.settings.token_ttl, BACKEND_MAX_TTL)
        token = self.issuer.issue(
            client_id,
            self.settings.token_audience,
            scopes=scopes,
            ttl=ttl,
            claims={"role": "system", "org": self.settings.org_id, "client_id": client_id},
        )
        return TokenGrant(token, ttl, " ".join(scopes))

    # --- SMART App Launch: authorization code and refresh token grants ---

    def authenticate_app(
        self, client_id: str | None, basic: tuple[str, str] | None, secret: str | None
    ) -> SmartApp:
        """The registered app making a token request: a public app names itself
        (``client_id``); a confidential one proves its secret (HTTP Basic or form)."""
        if basic is not None:
            client_id, secret = basic
        app = self.apps.get_app(client_id) if client_id else None
        if app is None or not app.active:
            self.record_failure(LoginFailure("authorization_code", "unknown_client"))
            raise OAuthError("invalid_client", "unknown client_id")
        if app.confidential and not (secret and app.secret_matches(secret)):
            self.record_failure(LoginFailure("authorization_code", "bad_secret", app.client_id))
            raise OAuthError("invalid_client", "client authentication failed")
        if not app.confidential and secret:
            raise OAuthError("invalid_client", "a public app has no client secret")
        return app

    def authorization_code_grant(
        self, app: SmartApp, code: str, redirect_uri: str | None, verifier: str | None
    ) -> TokenGrant:
        if not code:
            raise OAuthError("invalid_request", "code is required")
        try:
            redeemed = self.codes.redeem(code, app.client_id, redirect_uri, verifier)
        except OAuthError as exc:
            self.record_failure(LoginFailure("authorization_code", "bad_code", app.client_id))
            raise exc from None
        return self._launch_tokens(app, redeemed.grant, redeemed.family)

    def refresh_token_grant(self, app: SmartApp, token: str, scope: str | None) -> TokenGrant:
        if not token:
            raise OAuthError("invalid_request", "refresh_token is required")
        grant, family, _expires = self.refresh_tokens.rotate(token, app.client_id)
        account = self.accounts.get_user(grant.subject)
        if account is None or not account.active:
            RefreshStore.revoke_family(self.accounts.engine, family)
            raise OAuthError("invalid_grant", "the account of this grant is no longer active")
        if scope and scope.split():
            wanted = scope.split()
            if not set(wanted) <= set(grant.scopes):
                raise OAuthError("invalid_scope", "a refresh may only narrow the granted scopes")
            grant = LaunchGrant(
                grant.subject, grant.role, tuple(wanted), grant.patient, grant.fhir_user
            )
        return self._launch_tokens(app, grant, family, with_id_token=False)

    def _launch_tokens(
        self, app: SmartApp, grant: LaunchGrant, family: str, *, with_id_token: bool = True
    ) -> TokenGrant:
        ttl = self.settings.token_ttl
        claims: dict[str, Any] = {
            "role": grant.role,
            "org": self.settings.org_id,
            "client_id": app.client_id,
        }
        if grant.patient:
            claims["patient"] = grant.patient
        if grant.fhir_user and grant.has("fhirUser"):
            claims["fhirUser"] = f"{self.settings.fhir_base_url}/{grant.fhir_user}"
        scopes = list(grant.scopes)
        token = self.issuer.issue(
            grant.subject, self.settings.token_audience, scopes=scopes, ttl=ttl, claims=claims
        )
        id_token = None
        if with_id_token and grant.has("openid"):
            id_claims: dict[str, Any] = {}
            if "fhirUser" in claims:
                id_claims["fhirUser"] = claims["fhirUser"]
            if grant.nonce:
                id_claims["nonce"] = grant.nonce
            id_token = TokenIssuer(self.settings.base_url, self.key, ttl).issue(
                grant.subject, app.client_id, ttl=ttl, claims=id_claims
            )
        refresh = None
        if grant.has("offline_access") or grant.has("online_access"):
            refresh_ttl = (
                self.settings.oauth.offline_refresh_ttl
                if grant.has("offline_access")
                else self.settings.oauth.online_refresh_ttl
            )
            refresh = self.refresh_tokens.issue(app.client_id, grant, family, refresh_ttl)
        return TokenGrant(token, ttl, " ".join(scopes), grant.patient, id_token, refresh)

    # --- verification ---

    def principal(self, token: str) -> Principal:
        regional = self.regional_patients
        if regional is not None and regional.is_candidate(token):
            return regional.principal(token)
        try:
            claims = self.verifier.verify(token)
        except TokenError as exc:
            raise Unauthorized(str(exc)) from None
        return Principal.from_claims(claims, self.settings.org_id)

    def issue_local(self, subject: str, role: str, *, ttl: int | None = None) -> TokenGrant:
        """A token for a local service or operator (``ipjms node token``), role scopes."""
        scopes = list(ROLE_SCOPES[role])
        ttl = ttl or self.settings.token_ttl
        token = self.issuer.issue(
            subject,
            self.settings.token_audience,
            scopes=scopes,
            ttl=ttl,
            claims={"role": role, "org": self.settings.org_id},
        )
        return TokenGrant(token, ttl, " ".join(scopes))
