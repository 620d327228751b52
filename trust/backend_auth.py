"""Organisation-to-service authentication (SMART Backend Services style, certificate-backed).

An organisation proves who it is with a short JWT signed by its CA-certified signing key (EC
P-384 → ``ES384``, as SMART Backend Services recommends), carrying its signing certificate in the
``x5c`` header. A service verifies it with nothing but the regional CA certificate and the
revocation list: the certificate chains to the CA and is not revoked, its organisation is the
``iss`` and ``sub``, the signature, audience and expiry hold, the lifetime is at most 300 s and
the ``jti`` has not been seen before. The JWT rules themselves (algorithm allow-list, required
claims) are those of :mod:`trust.tokens`, reused here.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Collection
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from trust.certificates import CertificateError, load_certificate, verify_peer_certificate
from trust.tokens import ALLOWED_ALGORITHMS, ReplayCache, TokenError, TokenVerifier

__all__ = [
    "make_org_assertion",
    "verify_org_assertion",
    "verify_org_assertion_claims",
    "MAX_ASSERTION_TTL",
    "TokenError",
]

MAX_ASSERTION_TTL = 300


def make_org_assertion(
    creds: Any, audience: str, ttl: int = 60, *, act: dict[str, str] | None = None
) -> str:
    """A one-time assertion of ``creds.org_id`` (:class:`trust.pki.OrgCredentials`) for
    ``audience`` (the URL or id of the service it is presented to).

    ``act`` (RFC 8693 actor claim, e.g. ``{"role": "doctor", "sub": "<opaque user id>"}``)
    states, under the organisation's signature, for which of its users it acts: a service that
    relies on the user's role takes it from here, never from an unsigned request field."""
    if not 0 < ttl <= MAX_ASSERTION_TTL:
        raise ValueError(f"assertion lifetime must be 1..{MAX_ASSERTION_TTL} s")
    cert = load_certificate(creds.signing_cert_pem)
    der = cert.public_bytes(serialization.Encoding.DER)
    now = int(time.time())
    claims = {
        "iss": creds.org_id,
        "sub": creds.org_id,
        "aud": audience,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "jti": uuid.uuid4().hex,
    }
    if act:
        claims["act"] = dict(act)
    headers = {"kid": creds.signing_fingerprint, "x5c": [base64.b64encode(der).decode()]}
    return jwt.encode(claims, creds.signing_key, algorithm=creds.signing_algorithm, headers=headers)


def verify_org_assertion(
    token: str,
    *,
    ca_cert_pem: bytes,
    audience: str,
    replay_cache: ReplayCache | None,
    revoked: Collection[str | int] = (),
) -> str:
    """Return the organisation id the assertion proves, or raise :class:`TokenError`."""
    claims = verify_org_assertion_claims(
        token,
        ca_cert_pem=ca_cert_pem,
        audience=audience,
        replay_cache=replay_cache,
        revoked=revoked,
    )
    return str(claims["sub"])


def verify_org_assertion_claims(
    token: str,
    *,
    ca_cert_pem: bytes,
    audience: str,
    replay_cache: ReplayCache | None,
    revoked: Collection[str | int] = (),
) -> dict[str, Any]:
    """The verified claims of an organisation assertion (``sub`` = the organisation id, and
    ``act`` when the organisation signed for one of its users), or raise :class:`TokenError`."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise TokenError(f"malformed token: {exc}") from None
    if header.get("alg") not in ALLOWED_ALGORITHMS:
        raise TokenError(f"token algorithm {header.get('alg')!r} is not accepted")
    chain = header.get("x5c")
    if not isinstance(chain, list) or len(chain) != 1 or not isinstance(chain[0], str):
        raise TokenError("assertion must carry exactly one x5c certificate")
    try:
        der = base64.b64decode(chain[0], validate=True)
        org_id = verify_peer_certificate(der, ca_cert_pem, revoked=revoked, usage="signing")
    except (ValueError, CertificateError) as exc:
        raise TokenError(f"assertion certificate refused: {exc}") from None
    public_key = load_certificate(der).public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise TokenError("assertion certificate key is not an EC key")
    kid = str(header.get("kid"))
    verifier = TokenVerifier(
        issuer=org_id,
        audience=audience,
        keys={kid: public_key},
        replay_cache=replay_cache,
        max_lifetime=MAX_ASSERTION_TTL,
    )
    claims = verifier.verify(token)
    if claims.get("sub") != org_id:
        raise TokenError("assertion subject must be the issuing organisation")
    act = claims.get("act")
    if act is not None and not (
        isinstance(act, dict) and all(isinstance(v, str) for v in act.values())
    ):
        raise TokenError("assertion act claim must be an object of strings")
    return claims
