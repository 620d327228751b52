"""Who is calling the registry: organisations (cert-backed assertions) and patients (passwords).

* Organisations (nodes, coordinator, authority) ``POST /auth/token`` with
  ``grant_type=client_credentials``, ``client_assertion_type=urn:ietf:params:oauth:client-
  assertion-type:jwt-bearer`` and ``client_assertion`` = a JWT from
  :func:`trust.backend_auth.make_org_assertion` (signed with the organisation's CA-certified
  key; audience ``<registry>/auth/token``; ``jti`` single use, remembered in the registry's
  database until the assertion's accepted window — ``exp`` + leeway — closes, across restarts).
  A node acting for a user states it *inside the signed assertion*: an ``act`` claim with
  ``role`` (``doctor``/``nurse``/``admin``/``system``) and ``sub`` (the node's opaque user id).
  It becomes the token's ``act`` claim, with the signed assertion kept as evidence
  (``act.evidence``) that the break-glass audit entry records. Unsigned ``acting_role`` /
  ``acting_user`` form fields are refused. The registry cannot check a node's users itself: it
  holds the organisation to its signed word, and every use is audited under that organisation's
  name — the authenticated caller, never a name taken from a request body. Only
  ``doctor``/``nurse`` may break the glass.
* Patients ``POST /auth/patient-token`` with ``username`` (login handle or pseudonym) and
  ``password``.

Access tokens are ES256 JWTs signed by the registry (≤ 300 s) with a ``kind`` claim (``org`` or
``patient``) and scopes; every route declares the scope it needs via :func:`require`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from fastapi import Request

from servicekit.outcome import BadRequest, Forbidden, Unauthorized
from trust.tokens import ReplayCache, SigningKey, TokenError, TokenIssuer, TokenVerifier

MAX_ACTING_USER = 128

__all__ = [
    "ACCESS_AUDIENCE",
    "ORG_SCOPES",
    "PATIENT_SCOPES",
    "CLINICIAN_ROLES",
    "ACTING_ROLES",
    "Principal",
    "Authenticator",
    "require",
]

ACCESS_AUDIENCE = "ipjms-consent"
#: what an organisation may do: ask for decisions, issue enrolment codes, report disclosures
ORG_SCOPES = ("system/Consent.decide", "system/Enrolment.c", "system/Disclosure.c")
#: what a patient may do: their own consents and their own disclosure list
PATIENT_SCOPES = ("patient/Consent.cruds", "patient/Disclosure.rs")
CLINICIAN_ROLES = frozenset({"doctor", "nurse"})
ACTING_ROLES = frozenset({"doctor", "nurse", "admin", "system"})
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass(frozen=True)
class Principal:
    kind: str  # org | patient
    subject: str  # org id, or patient pseudonym
    scopes: frozenset[str]
    acting_role: str | None = None
    acting_user: str | None = None
    #: the organisation's signed assertion that stated ``acting_role``/``acting_user``
    acting_evidence: str | None = None

    @property
    def org_id(self) -> str | None:
        return self.subject if self.kind == "org" else None

    @property
    def patient(self) -> str | None:
        return self.subject if self.kind == "patient" else None


class Authenticator:
    """Issues and checks the registry's access tokens."""

    def __init__(
        self,
        key: SigningKey,
        *,
        issuer: str,
        token_urls: list[str],
        ca_dir: Path | None,
        token_ttl: int = 300,
        replay_cache: ReplayCache | None = None,
    ) -> None:
        self.issuer = TokenIssuer(issuer, key, default_ttl=min(token_ttl, 300))
        self.verifier = TokenVerifier(issuer, ACCESS_AUDIENCE, {key.kid: key.public_key})
        self.token_urls = list(token_urls)
        self.ca_dir = ca_dir
        # The app passes the database-backed cache (trust.jti_store); memory only for tests.
        self.replay_cache = replay_cache if replay_cache is not None else ReplayCache()
        self._ca_cert: bytes | None = None

    # --- organisations ------------------------------------------------------------------

    def _ca_cert_pem(self) -> bytes:
        if self.ca_dir is None:
            raise Unauthorized("this registry has no CA configured; organisations cannot log in")
        if self._ca_cert is None:
            from trust.pki import load_ca_cert

            self._ca_cert = load_ca_cert(self.ca_dir)
        return self._ca_cert

    def _revoked_list(self) -> frozenset[Any]:
        """The CA's revocation list (trust.pki re-reads it when the file changes and refuses a
        missing, stale or rolled-back CRL — a refusal here is a 401, fail closed)."""
        from trust.pki import revocation_list

        if self.ca_dir is None:
            raise Unauthorized("this registry has no CA configured; organisations cannot log in")
        return revocation_list(self.ca_dir)

    def org_token(self, form: dict[str, str]) -> dict[str, Any]:
        from trust.backend_auth import verify_org_assertion_claims

        if form.get("acting_role") or form.get("acting_user"):
            raise BadRequest(
                "acting_role/acting_user are not taken from the form: state them as the act "
                "claim of the signed client_assertion",
                expression=["acting_role"],
            )
        if form.get("grant_type") != "client_credentials":
            raise BadRequest("grant_type must be client_credentials", code="invalid")
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise BadRequest(f"client_assertion_type must be {ASSERTION_TYPE}")
        assertion = form.get("client_assertion") or ""
        if not assertion:
            raise BadRequest("client_assertion is required")
        ca = self._ca_cert_pem()
        try:
            # Accept the token URL under any of this registry's public names (checked below).
            claimed = jwt.decode(assertion, options={"verify_signature": False}).get("aud")
            audience = claimed if claimed in self.token_urls else self.token_urls[0]
            verified = verify_org_assertion_claims(
                assertion,
                ca_cert_pem=ca,
                audience=audience,
                replay_cache=self.replay_cache,
                revoked=self._revoked_list(),
            )
        except Exception as exc:  # every refusal is a 401 with the reason, never a 500
            raise Unauthorized(f"organisation assertion refused: {exc}") from None
        org_id = str(verified["sub"])
        requested = set((form.get("scope") or "").split()) or set(ORG_SCOPES)
        unknown = requested - set(ORG_SCOPES)
        if unknown:
            raise Forbidden(f"scopes not available to organisations: {' '.join(sorted(unknown))}")
        claims: dict[str, Any] = {"kind": "org"}
        act = _acting(verified.get("act"))
        if act:
            claims["act"] = {**act, "evidence": assertion}
        token = self.issuer.issue(org_id, ACCESS_AUDIENCE, scopes=sorted(requested), claims=claims)
        return self._token_response(token, requested)

    # --- patients -----------------------------------------------------------------------

    def patient_token(
        self,
        pseudonym: str,
        scopes: list[str] | tuple[str, ...] = PATIENT_SCOPES,
        *,
        client_id: str | None = None,
        auth_time: int | None = None,
    ) -> dict[str, Any]:
        """A patient's access token. Its audience is this registry *and* the region's patient
        API (every node accepts it for the patient's own compartment: consent/oidc.py)."""
        from consent.oidc import PATIENT_API_AUDIENCE

        claims: dict[str, Any] = {"kind": "patient", "aud": [ACCESS_AUDIENCE, PATIENT_API_AUDIENCE]}
        if client_id:
            claims["client_id"] = client_id
        if auth_time is not None:
            claims["auth_time"] = auth_time
        token = self.issuer.issue(pseudonym, ACCESS_AUDIENCE, scopes=scopes, claims=claims)
        body = self._token_response(token, set(scopes))
        body["patient"] = pseudonym
        return body

    def id_token(
        self, pseudonym: str, client_id: str, *, nonce: str | None, auth_time: int, at_hash: str
    ) -> str:
        """OpenID Connect ID token for ``client_id`` (not an access token: its audience is the
        client, so no service accepts it as a bearer token)."""
        claims: dict[str, Any] = {"auth_time": auth_time, "at_hash": at_hash}
        if nonce is not None:
            claims["nonce"] = nonce
        return self.issuer.issue(pseudonym, client_id, claims=claims)

    def _token_response(self, token: str, scopes: set[str]) -> dict[str, Any]:
        return {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.issuer.default_ttl,
            "scope": " ".join(sorted(scopes)),
        }

    # --- every request ------------------------------------------------------------------

    def principal(self, request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("a bearer token is required")
        try:
            claims = self.verifier.verify(token.strip())
        except TokenError as exc:
            raise Unauthorized(str(exc)) from None
        kind = claims.get("kind")
        if kind not in ("org", "patient"):
            raise Unauthorized("token kind is unknown")
        act = claims.get("act") or {}
        return Principal(
            kind=str(kind),
            subject=str(claims["sub"]),
            scopes=frozenset(str(claims.get("scope", "")).split()),
            acting_role=act.get("role"),
            acting_user=act.get("sub"),
            acting_evidence=act.get("evidence"),
        )


def _acting(act: object) -> dict[str, str]:
    """The ``act`` claim of a verified organisation assertion, checked: a known role and an
    optional opaque user id. Empty when the organisation acts for no user."""
    if not act:
        return {}
    if not isinstance(act, dict):
        raise BadRequest("the assertion's act claim must be an object", expression=["act"])
    role = act.get("role")
    if role not in ACTING_ROLES:
        raise BadRequest(
            f"act.role must be one of {', '.join(sorted(ACTING_ROLES))}", expression=["act.role"]
        )
    out = {"role": str(role)}
    user = act.get("sub")
    if user is not None:
        if not isinstance(user, str) or not user or len(user) > MAX_ACTING_USER:
            raise BadRequest(
                "act.sub must be a user id of 1-128 characters", expression=["act.sub"]
            )
        out["sub"] = user
    return out


def require(scope: str, *, kind: str | None = None) -> Callable[[Request], Principal]:
    """A FastAPI dependency: an authenticated principal holding ``scope`` (and of ``kind``)."""

    def dependency(request: Request) -> Principal:
        auth: Authenticator = request.app.state.authenticator
        principal = auth.principal(request)
        if kind is not None and principal.kind != kind:
            who = "an organisation" if principal.kind == "org" else "a patient"
            raise Forbidden(f"{who} may not do this (needs a {kind} token with {scope})")
        if scope not in principal.scopes:
            raise Forbidden(f"token lacks scope {scope}")
        return principal

    return dependency
