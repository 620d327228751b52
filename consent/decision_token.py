"""Signed consent decisions: a JWS the registry signs and any node verifies offline.

The token (``typ: ipjms-consent-decision+jwt``, ES256, ``aud: ipjms-consent-decision``) carries
the whole decision and ``req``, the SHA-256 of the canonical request, so a receiver can check
that the decision answers exactly the request it is shown (patient, requester, recipient,
purpose, classes) and, when the requester named one, ``env``, the id of the envelope that will
carry it (the token travels inside that envelope's encrypted payload; the receiver verifies it
before importing).

Key ids are RFC 7638 thumbprints, so a rotated key always has a new id and the JWKS at
``GET /.well-known/jwks.json`` publishes old and new side by side. A registry run with
organisation credentials signs with its CA-certified signing key and puts that certificate in
the token (``x5c``): a verifier holding a :class:`CaPin` checks the certificate against the
regional CA, its CRL and the registry's organisation id, and fetches nothing — a key served by
whoever answers on the registry's (plain-HTTP) address is never trusted.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from trust.canonical_json import canonical_json
from trust.certificates import CertificateError, load_certificate, verify_peer_certificate
from trust.tokens import SigningKey, TokenError, jwk_thumbprint, key_thumbprint

__all__ = [
    "DECISION_AUDIENCE",
    "DECISION_TYP",
    "SignedDecision",
    "DecisionTokenError",
    "request_hash",
    "sign_decision",
    "verify_decision_token",
    "jwks_of",
    "CaPin",
    "x5c_of",
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
    envelope_id: str = ""
    issued_at: int = 0
    lookup_id: str = ""  # a record-locator lookup's decision (claim ``lookup``), no envelope's


@dataclass(frozen=True)
class CaPin:
    """Trust a decision only if signed by ``registry_org``'s CA-issued signing certificate
    (carried in the token's ``x5c``), checked against the regional CA and its CRL."""

    ca_cert_pem: bytes
    registry_org: str
    revoked: Collection[str | int] = ()


def x5c_of(cert_pem: bytes) -> list[str]:
    """The JOSE ``x5c`` value of one certificate (base64 DER, RFC 7515 §4.1.6)."""
    der = load_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return [base64.b64encode(der).decode()]


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
    key: SigningKey,
    issuer: str,
    claims: Mapping[str, Any],
    ttl: int,
    *,
    x5c: Sequence[str] = (),
) -> tuple[str, int]:
    """Sign a decision; returns (token, expiry as epoch seconds). ``x5c``: the certificate of
    ``key`` (the registry's CA-issued signing certificate) for verifiers that pin the CA."""
    now = int(time.time())
    payload = {
        **claims,
        "iss": issuer,
        "aud": DECISION_AUDIENCE,
        "iat": now,
        "exp": now + ttl,
        "jti": claims.get("jti") or uuid.uuid4().hex,
    }
    headers: dict[str, Any] = {"kid": key.kid, "typ": DECISION_TYP}
    if x5c:
        headers["x5c"] = list(x5c)
    token = jwt.encode(payload, key.private_key, algorithm=key.algorithm, headers=headers)
    return token, int(payload["exp"])


def jwks_of(
    *keys: SigningKey, certificates: Mapping[str, Sequence[str]] | None = None
) -> dict[str, Any]:
    """The registry's JWKS: each key under its id, with its ``x5c`` where known. During a
    rotation the old key is listed beside the new one (their thumbprint ids differ)."""
    out = []
    for k in keys:
        jwk = k.public_jwk()
        if certificates and k.kid in certificates:
            jwk["x5c"] = list(certificates[k.kid])
        out.append(jwk)
    return {"keys": out}


def _pinned_key(header: Mapping[str, Any], pin: CaPin) -> ec.EllipticCurvePublicKey:
    x5c = header.get("x5c")
    if not isinstance(x5c, list) or not x5c or not isinstance(x5c[0], str):
        raise DecisionTokenError("decision carries no registry certificate (x5c)")
    try:
        der = base64.b64decode(x5c[0], validate=True)
        org = verify_peer_certificate(der, pin.ca_cert_pem, revoked=pin.revoked, usage="signing")
    except (CertificateError, ValueError) as exc:
        raise DecisionTokenError(f"decision certificate refused: {exc}") from None
    if org != pin.registry_org:
        raise DecisionTokenError(
            f"decision signed by {org}, not by the consent registry {pin.registry_org}"
        )
    public = load_certificate(der).public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise DecisionTokenError("decision certificate holds no EC key")
    if header.get("kid") != key_thumbprint(public):
        raise DecisionTokenError("decision kid is not the thumbprint of its certificate's key")
    return public


def verify_decision_token(
    token: str,
    jwks: Mapping[str, Any] | None,
    *,
    issuer: str | None = None,
    expected_request_hash: str | None = None,
    leeway: int = 5,
    pin: CaPin | None = None,
    valid_at: int | None = None,
) -> SignedDecision:
    """Verify a decision offline; raise DecisionTokenError.

    With ``pin``, the key is the registry's CA-certified one from the token's ``x5c`` (``jwks``
    is ignored); without, the key is looked up by ``kid`` in ``jwks``. ``valid_at`` checks the
    token was live at that moment (epoch seconds, ± ``leeway``) instead of now — what a
    receiver asks of a token that travelled in a store-and-forward envelope."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise DecisionTokenError(f"malformed decision token: {exc}") from None
    if header.get("alg") not in ("ES256", "ES384"):
        raise DecisionTokenError(f"decision algorithm {header.get('alg')!r} is not accepted")
    if header.get("typ") != DECISION_TYP:
        raise DecisionTokenError("not a consent decision token")
    if pin is not None:
        public_key: Any = _pinned_key(header, pin)
    else:
        keys = (jwks or {}).get("keys", [])
        jwk = next((k for k in keys if k.get("kid") == header.get("kid")), None)
        if jwk is None:
            raise DecisionTokenError("decision signed by an unknown key")
        try:
            if jwk_thumbprint(jwk) != jwk.get("kid"):
                raise DecisionTokenError("JWKS key id is not the key's RFC 7638 thumbprint")
        except TokenError as exc:
            raise DecisionTokenError(f"JWKS key refused: {exc}") from None
        public_key = ECAlgorithm.from_jwk(dict(jwk))
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            public_key,
            algorithms=[str(header["alg"])],
            audience=DECISION_AUDIENCE,
            issuer=issuer,
            leeway=leeway,
            options={
                "require": ["exp", "iat", "iss", "aud", "jti", "sub"],
                "verify_exp": valid_at is None,
                "verify_iat": valid_at is None,
            },
        )
    except jwt.ExpiredSignatureError:
        raise DecisionTokenError("decision expired") from None
    except jwt.InvalidSignatureError:
        raise DecisionTokenError("decision signature is invalid") from None
    except jwt.PyJWTError as exc:
        raise DecisionTokenError(f"decision refused: {exc}") from None
    if valid_at is not None and not (
        int(claims["iat"]) - leeway <= valid_at <= int(claims["exp"]) + leeway
    ):
        raise DecisionTokenError("decision was not valid when the envelope was made")
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
        envelope_id=str(claims.get("env", "")),
        issued_at=int(claims["iat"]),
        lookup_id=str(claims.get("lookup", "")),
    )
