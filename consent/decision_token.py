"""Signed consent decisions: a JWS the registry signs and any node verifies offline.

The token (``typ: ipjms-consent-decision+jwt``, ES256, ``aud: ipjms-consent-decision``) carries
the whole decision and ``req``, the SHA-256 of the canonical request, so a receiver can check
that the decision answers exactly the request it is shown (patient, requester, recipient,
purpose, classes). Verification needs only the registry's public key, published as a JWKS at
``GET /.well-known/jwks.json``; nothing is fetched per decision.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from jwt.algorithms import ECAlgorithm

from trust.canonical_json import canonical_json
from trust.tokens import SigningKey

__all__ = [
    "DECISION_AUDIENCE",
    "DECISION_TYP",
    "SignedDecision",
    "DecisionTokenError",
    "request_hash",
    "sign_decision",
    "verify_decision_token",
    "jwks_of",
]

DECISION_AUDIENCE = "ipjms-consent-decision"
DECISION_TYP = "ipjms-consent-decision+jwt"


class DecisionTokenError(Exception):
    """A decision token was refused (forged, tampered, expired, for another request)."""


@dataclass(frozen=True)
class SignedDecision:
    permit: bool
    classes: frozenset[str]
    consent_ids: tuple[str, ...]
    reason: str
    token: str
    decision_id: str = ""
    patient: str = ""
    requester: str = ""
    recipient: str = ""
    purpose: str = ""
    break_glass: bool = False
    expires_at: int = 0
    request_hash: str = ""
    data_period: dict[str, str] | None = None
    refused_classes: frozenset[str] = field(default_factory=frozenset)


def request_hash(
    patient: str, requester: str, recipient: str, purpose: str, classes: Iterable[str]
) -> str:
    """SHA-256 (hex) of the canonical request: what a decision is bound to."""
    body = {
        "patient": patient,
        "requester": requester,
        "recipient": recipient,
        "purpose": purpose,
        "classes": sorted(set(classes)),
    }
    return hashlib.sha256(canonical_json(body)).hexdigest()


def sign_decision(
    key: SigningKey, issuer: str, claims: Mapping[str, Any], ttl: int
) -> tuple[str, int]:
    """Sign a decision; returns (token, expiry as epoch seconds)."""
    now = int(time.time())
    payload = {
        **claims,
        "iss": issuer,
        "aud": DECISION_AUDIENCE,
        "iat": now,
        "exp": now + ttl,
        "jti": claims.get("jti") or uuid.uuid4().hex,
    }
    token = jwt.encode(
        payload,
        key.private_key,
        algorithm=key.algorithm,
        headers={"kid": key.kid, "typ": DECISION_TYP},
    )
    return token, int(payload["exp"])


def jwks_of(*keys: SigningKey) -> dict[str, Any]:
    return {"keys": [k.public_jwk() for k in keys]}


def verify_decision_token(
    token: str,
    jwks: Mapping[str, Any],
    *,
    issuer: str | None = None,
    expected_request_hash: str | None = None,
    leeway: int = 5,
) -> SignedDecision:
    """Verify a decision offline against the registry's JWKS; raise DecisionTokenError."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise DecisionTokenError(f"malformed decision token: {exc}") from None
    if header.get("alg") not in ("ES256", "ES384"):
        raise DecisionTokenError(f"decision algorithm {header.get('alg')!r} is not accepted")
    if header.get("typ") != DECISION_TYP:
        raise DecisionTokenError("not a consent decision token")
    jwk = next((k for k in jwks.get("keys", []) if k.get("kid") == header.get("kid")), None)
    if jwk is None:
        raise DecisionTokenError("decision signed by an unknown key")
    public_key = ECAlgorithm.from_jwk(dict(jwk))
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            public_key,  # type: ignore[arg-type]
            algorithms=[str(header["alg"])],
            audience=DECISION_AUDIENCE,
            issuer=issuer,
            leeway=leeway,
            options={"require": ["exp", "iat", "iss", "aud", "jti", "sub"]},
        )
    except jwt.ExpiredSignatureError:
        raise DecisionTokenError("decision expired") from None
    except jwt.InvalidSignatureError:
        raise DecisionTokenError("decision signature is invalid") from None
    except jwt.PyJWTError as exc:
        raise DecisionTokenError(f"decision refused: {exc}") from None
    if expected_request_hash is not None and claims.get("req") != expected_request_hash:
        raise DecisionTokenError("decision answers a different request")
    return SignedDecision(
        permit=bool(claims.get("permit")),
        classes=frozenset(claims.get("classes", [])),
        consent_ids=tuple(claims.get("consents", [])),
        reason=str(claims.get("reason", "")),
        token=token,
        decision_id=str(claims["jti"]),
        patient=str(claims["sub"]),
        requester=str(claims.get("requester", "")),
        recipient=str(claims.get("recipient", "")),
        purpose=str(claims.get("purpose", "")),
        break_glass=bool(claims.get("break_glass", False)),
        expires_at=int(claims["exp"]),
        request_hash=str(claims.get("req", "")),
        data_period=claims.get("data_period"),
        refused_classes=frozenset(claims.get("refused", [])),
    )
