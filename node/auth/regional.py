"""The region's patient sign-in at a node: accepting the consent registry's patient tokens.

A patient signs in once, at the consent registry (OpenID Connect, ``consent/oidc.py``); the
access token it issues has audience ``ipjms-patient-api`` and ``sub`` = the patient's pseudonym.
This node accepts such a token for the patient's own compartment only:

1. **The issuer's key.** The node reads ``<registry>/.well-known/openid-configuration`` and its
   ``jwks_uri`` (same origin as the configured registry URL, else refused). Over ``https`` the
   certificate is verified (the regional CA when ``[pki] ca_dir`` is set, else the system store);
   ``[consent] patient_key_pins`` (RFC 7638 thumbprints, ``ipjms consent key-pin``) keeps only the
   pinned keys — required over plain ``http``, so a network attacker cannot swap the key. Keys
   are cached; an unknown ``kid`` refetches at most every 30 s (key rotation).
2. **The token.** ES256, issuer = the discovered issuer, audience ``ipjms-patient-api``,
   ``kind: patient``, lifetime ≤ 300 s.
3. **The patient.** ``resolve(pseudonym)`` finds the local Patient through the linkage key
   (``node/patient/links.py``); a patient this node holds no record of gets 403.
4. **The scopes.** The token's scopes narrowed to this node's ``patient`` role (data,
   ``node/auth/roles.py``): the registry can never grant more here than the node allows.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from node.auth.grants import ScopeRefused, grant_scopes
from node.auth.principal import Principal
from node.auth.roles import ROLE_SCOPES
from servicekit.outcome import Forbidden, Unauthorized
from trust.tokens import TokenError, TokenVerifier, jwk_thumbprint

__all__ = ["RegionalPatientTokens", "PATIENT_API_AUDIENCE"]

log = logging.getLogger("ipjms.node.auth")

PATIENT_API_AUDIENCE = "ipjms-patient-api"  # = consent.oidc.PATIENT_API_AUDIENCE
_REFETCH_AFTER = 30.0


@dataclass
class RegionalPatientTokens:
    registry_url: str
    resolve: Callable[[str], str | None]
    org_id: str
    pins: frozenset[str] = frozenset()
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=5.0))
    _issuer: str | None = None
    _keys: dict[str, ec.EllipticCurvePublicKey] = field(default_factory=dict)
    _fetched_at: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def configured_securely(self) -> bool:
        return bool(self.pins) or urlsplit(self.registry_url).scheme == "https"

    def _fetch(self) -> None:
        base = self.registry_url.rstrip("/")
        config = self.http.get(f"{base}/.well-known/openid-configuration").json()
        jwks_uri = str(config.get("jwks_uri", ""))
        origin = urlsplit(base)
        if urlsplit(jwks_uri)[:2] != origin[:2]:
            raise TokenError("the registry's jwks_uri is not on the registry's own origin")
        keys: dict[str, ec.EllipticCurvePublicKey] = {}
        for jwk in self.http.get(jwks_uri).json().get("keys", []):
            if self.pins and jwk_thumbprint(jwk) not in self.pins:
                continue
            key = ECAlgorithm.from_jwk(jwk)
            if isinstance(key, ec.EllipticCurvePublicKey) and jwk.get("kid"):
                keys[str(jwk["kid"])] = key
        self._issuer = str(config["issuer"])
        self._keys = keys
        self._fetched_at = time.monotonic()
        log.info("regional patient keys loaded", extra={"keys": len(keys)})

    def _key_set(self, kid: str) -> tuple[str, dict[str, ec.EllipticCurvePublicKey]]:
        with self._lock:
            stale = time.monotonic() - self._fetched_at > _REFETCH_AFTER
            if self._issuer is None or (kid not in self._keys and stale):
                try:
                    self._fetch()
                except (httpx.HTTPError, ValueError, KeyError, TokenError) as exc:
                    log.warning("cannot load the registry's patient keys: %s", exc)
                    if self._issuer is None:
                        raise Unauthorized("the region's patient sign-in is unavailable") from None
            assert self._issuer is not None
            return self._issuer, dict(self._keys)

    def is_candidate(self, token: str) -> bool:
        """Whether ``token`` claims to come from the registry (unverified peek)."""
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return False
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        return PATIENT_API_AUDIENCE in auds and claims.get("kind") == "patient"

    def principal(self, token: str) -> Principal:
        if not self.configured_securely:
            raise Unauthorized(
                "this node does not trust the region's patient sign-in: pin the registry's key "
                "([consent] patient_key_pins) or reach the registry over https"
            )
        try:
            kid = str(jwt.get_unverified_header(token).get("kid"))
        except jwt.PyJWTError:
            raise Unauthorized("malformed token") from None
        issuer, keys = self._key_set(kid)
        try:
            claims = TokenVerifier(issuer, PATIENT_API_AUDIENCE, keys).verify(token)
        except TokenError as exc:
            raise Unauthorized(str(exc)) from None
        if claims.get("kind") != "patient":
            raise Unauthorized("not a patient token")
        pseudonym = str(claims["sub"])
        try:
            requested = str(claims.get("scope", "")).strip()
            if not requested:
                raise ScopeRefused("no scope")
            scopes = grant_scopes(ROLE_SCOPES["patient"], requested)
        except ScopeRefused:
            raise Forbidden("the token carries no scope this node grants patients") from None
        patient_id = self.resolve(pseudonym)
        if patient_id is None:
            raise Forbidden("this node holds no record for the signed-in patient")
        return Principal.from_claims(
            {"sub": pseudonym, "role": "patient", "scope": " ".join(scopes), "patient": patient_id},
            self.org_id,
        )

    def close(self) -> None:
        self.http.close()
