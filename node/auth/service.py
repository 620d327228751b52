"""Token grants and token verification for one node.

- password grant: an account's username + password → access token with its role's scopes;
- client_credentials grant: a registered backend client proves itself with a signed JWT client
  assertion (SMART Backend Services: ``iss`` = ``sub`` = client id, ``aud`` = token URL, unique
  ``jti``, short ``exp``) → access token (≤ 300 s) with ``system/…`` scopes;
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
from node.auth.grants import ScopeRefused, grant_scopes
from node.auth.principal import Principal
from node.auth.replay import DbReplayCache
from node.auth.roles import ROLE_SCOPES
from node.settings import NodeSettings
from servicekit.outcome import BadRequest, Unauthorized
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
    reason: str  # bad_credentials | inactive | bad_assertion | replayed | unknown_client | scope
    known_subject: str | None = None


@dataclass(frozen=True)
class TokenGrant:
    access_token: str
    expires_in: int
    scope: str
    patient: str | None = None

    def response(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "access_token": self.access_token,
            "token_type": "bearer",
            "expires_in": self.expires_in,
            "scope": self.scope,
        }
        if self.patient:
            body["patient"] = self.patient  # SMART launch context
        return body


@dataclass
class AuthService:
    settings: NodeSettings
    accounts: AccountStore
    key: SigningKey
    failure_sinks: list[Callable[[LoginFailure], None]] = field(default_factory=list)
    assertion_replay: ReplayCache = field(default_factory=ReplayCache)

    @classmethod
    def for_node(cls, settings: NodeSettings, engine: Engine) -> AuthService:
        return cls(
            settings,
            AccountStore(engine),
            load_or_create_signing_key(settings.signing_key_path),
            assertion_replay=DbReplayCache(engine),
        )

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

    def _fail(self, failure: LoginFailure, message: str) -> Unauthorized:
        for sink in self.failure_sinks:
            try:
                sink(failure)
            except Exception:  # a broken sink must not turn a 401 into a 500
                log.exception("login-failure sink failed")
        return Unauthorized(message)

    # --- grants ---

    def password_grant(self, username: str, password: str, scope: str | None) -> TokenGrant:
        if not username or not password:
            raise BadRequest("password grant needs username and password")
        account = self.accounts.authenticate(username, password)
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
        verifier = TokenVerifier(
            client_id,
            audience,
            {str(header.get("kid")): client.public_key},
            replay_cache=self.assertion_replay,
            max_lifetime=ASSERTION_MAX_LIFETIME,
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

    # --- verification ---

    def principal(self, token: str) -> Principal:
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
