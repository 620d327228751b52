"""The registry as the region's patient OpenID Connect provider: clients, PKCE, codes, tokens.

One login for the region (issue 15). The consent registry already enrols every patient (one-time
code from the node that knows them → password) and knows them only by pseudonym; it is the
natural identity provider for patients. A patient app signs in with the **authorization code
flow with PKCE** (RFC 6749 §4.1, RFC 7636 ``S256`` only, OpenID Connect Core §3.1) as a *public*
client registered by redirect URI; the registry answers with

* an **ID token** (``aud`` = the client, ``nonce``, ``auth_time``, ``at_hash``) and
* an **access token**: ES256 JWT, ``sub`` = the patient's pseudonym, ``kind: patient``, audience
  ``["ipjms-consent", "ipjms-patient-api"]``: the registry accepts it for the patient's consents
  and disclosures, and every node of the region accepts it for the patient's own compartment
  (``node/auth/regional.py``: the node fetches this registry's JWKS from ``jwks_uri``, keeps only
  pinned keys or fetches over verified TLS, and maps the pseudonym to its local Patient with the
  linkage key). Nodes narrow the token's scopes to their own patient role (data, node/auth/roles).

Authorization codes are random (256 bits), stored as SHA-256, single use (burnt by one
``UPDATE``), bound to client, redirect URI, PKCE challenge, scope and nonce, and live 60 s.
There are no refresh tokens: access tokens live ≤ 300 s and the app signs in again (planned).
Loopback redirect URIs match on any port (RFC 8252 §7.3), every other one exactly.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from sqlalchemy import Engine, insert, select, update

from consent.schema import oidc_codes

__all__ = [
    "PATIENT_API_AUDIENCE",
    "REGION_PATIENT_SCOPES",
    "CODE_TTL",
    "OidcError",
    "PublicClient",
    "AuthorizationRequest",
    "AuthorizationCodes",
    "pkce_challenge",
    "grant_patient_scopes",
    "at_hash",
]

#: the audience every node of the region accepts patient access tokens for
PATIENT_API_AUDIENCE = "ipjms-patient-api"
#: what a patient token may carry: their consents and disclosures here, and at the nodes their
#: own compartment (read) plus the writes a patient makes (home readings, questionnaire answers,
#: devices, appointments). Each node narrows these to its own patient role's scopes.
REGION_PATIENT_SCOPES = (
    "patient/Consent.cruds",
    "patient/Disclosure.rs",
    "patient/*.rs",
    "patient/Observation.cu",
    "patient/QuestionnaireResponse.cu",
    "patient/Device.cu",
    "patient/Appointment.cu",
    "patient/MedicationAdministration.cu",
)
OIDC_SCOPES = ("openid", "fhirUser")
CODE_TTL = 60
_VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")
_CHALLENGE = re.compile(r"^[A-Za-z0-9\-_]{43}$")
_LOOPBACK = ("127.0.0.1", "localhost", "[::1]", "::1")


class OidcError(Exception):
    """An OAuth2 error (RFC 6749 §5.2 code) with a description safe to show."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error, self.description, self.status = error, description, status


@dataclass(frozen=True)
class PublicClient:
    client_id: str
    redirect_uris: tuple[str, ...]

    def accepts_redirect(self, uri: str) -> bool:
        if uri in self.redirect_uris:
            return True
        want = urlsplit(uri)
        if want.scheme != "http" or want.hostname not in _LOOPBACK or want.fragment:
            return False
        for registered in self.redirect_uris:
            have = urlsplit(registered)
            if (
                have.scheme == "http"
                and have.hostname == want.hostname
                and have.path == want.path
                and have.query == want.query
            ):
                return True  # RFC 8252 §7.3: a native app's loopback port varies
        return False


@dataclass(frozen=True)
class AuthorizationRequest:
    client: PublicClient
    redirect_uri: str
    scope: tuple[str, ...]
    state: str
    code_challenge: str
    nonce: str | None

    @classmethod
    def parse(
        cls, params: dict[str, str], clients: dict[str, PublicClient]
    ) -> AuthorizationRequest:
        """Check an authorization request (pure). Every error is an :class:`OidcError`; the
        route never redirects to a URI it has not matched against the client."""
        client = clients.get(params.get("client_id", ""))
        if client is None:
            raise OidcError("invalid_client", "client_id is not a registered patient app")
        redirect = params.get("redirect_uri", "")
        if not client.accepts_redirect(redirect):
            raise OidcError("invalid_request", "redirect_uri is not registered for this client")
        if params.get("response_type") != "code":
            raise OidcError("unsupported_response_type", "response_type must be code")
        if params.get("code_challenge_method") != "S256":
            raise OidcError("invalid_request", "PKCE is required: code_challenge_method=S256")
        challenge = params.get("code_challenge", "")
        if not _CHALLENGE.match(challenge):
            raise OidcError("invalid_request", "code_challenge must be BASE64URL(SHA256(verifier))")
        scope = tuple(dict.fromkeys((params.get("scope") or "").split()))
        if "openid" not in scope:
            raise OidcError("invalid_scope", "scope must include openid")
        unknown = [s for s in scope if s not in OIDC_SCOPES and s not in REGION_PATIENT_SCOPES]
        if unknown:
            raise OidcError("invalid_scope", f"scopes not offered: {' '.join(unknown)}")
        state, nonce = params.get("state", ""), params.get("nonce") or None
        if len(state) > 256 or (nonce is not None and len(nonce) > 256):
            raise OidcError("invalid_request", "state and nonce are at most 256 characters")
        return cls(client, redirect, scope, state, challenge, nonce)


def pkce_challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def at_hash(access_token: str) -> str:
    """OIDC Core §3.1.3.6: left half of SHA-256 of the access token (ES256), base64url."""
    digest = hashlib.sha256(access_token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()


def grant_patient_scopes(requested: tuple[str, ...]) -> list[str]:
    """The resource scopes of the access token: those asked for, or all a patient may hold
    when the app asked only for ``openid``."""
    resource = [s for s in requested if s in REGION_PATIENT_SCOPES]
    return resource or list(REGION_PATIENT_SCOPES)


@dataclass(frozen=True)
class RedeemedCode:
    pseudonym: str
    client_id: str
    scope: tuple[str, ...]
    nonce: str | None
    auth_time: int


def _hash(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


class AuthorizationCodes:
    def __init__(self, engine: Engine, ttl: int = CODE_TTL) -> None:
        self.engine = engine
        self.ttl = ttl

    def issue(self, request: AuthorizationRequest, pseudonym: str) -> str:
        code = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            conn.execute(
                insert(oidc_codes).values(
                    code_hash=_hash(code),
                    pseudonym=pseudonym,
                    client_id=request.client.client_id,
                    redirect_uri=request.redirect_uri,
                    code_challenge=request.code_challenge,
                    scope=" ".join(request.scope),
                    nonce=request.nonce,
                    auth_time=int(now.timestamp()),
                    expires_at=now + timedelta(seconds=self.ttl),
                )
            )
        return code

    def redeem(
        self, code: str, *, client_id: str, redirect_uri: str, verifier: str
    ) -> RedeemedCode:
        """Burn the code (once) and check what it is bound to; OidcError otherwise."""
        if not code or len(code) > 128:
            raise OidcError("invalid_grant", "code is missing or malformed")
        if not _VERIFIER.match(verifier or ""):
            raise OidcError("invalid_grant", "code_verifier must be 43-128 unreserved characters")
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            row = conn.execute(
                select(oidc_codes).where(oidc_codes.c.code_hash == _hash(code))
            ).first()
            burnt = conn.execute(
                update(oidc_codes)
                .where(
                    oidc_codes.c.code_hash == _hash(code),
                    oidc_codes.c.used_at.is_(None),
                    oidc_codes.c.expires_at > now,
                )
                .values(used_at=now)
            )
        if row is None or burnt.rowcount != 1:
            raise OidcError("invalid_grant", "code is unknown, expired or already used")
        if row.client_id != client_id or row.redirect_uri != redirect_uri:
            raise OidcError("invalid_grant", "code was issued to another client or redirect_uri")
        if not secrets.compare_digest(pkce_challenge(verifier), row.code_challenge):
            raise OidcError("invalid_grant", "code_verifier does not match the code_challenge")
        return RedeemedCode(
            row.pseudonym, row.client_id, tuple(row.scope.split()), row.nonce, int(row.auth_time)
        )
