"""JSON Web Tokens: issue and verify short-lived bearer tokens (ES256/ES384 only).

Every service that hands out or accepts tokens goes through here, so the rules live in one
place: an explicit algorithm allow-list (``alg: none`` and HMAC confusion are impossible),
required ``iss``/``aud``/``exp``/``iat``/``jti``, bounded lifetime, and optional ``jti`` replay
rejection for one-time assertions.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "jwk_thumbprint",
    "TokenError",
    "SigningKey",
    "TokenIssuer",
    "TokenVerifier",
    "ReplayCache",
    "load_or_create_signing_key",
    "ALLOWED_ALGORITHMS",
    "key_thumbprint",
]

ALLOWED_ALGORITHMS = ("ES256", "ES384")
_CURVES = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1()}
MAX_TTL_SECONDS = 3600


class TokenError(Exception):
    """A token was refused; the message says why (safe to show to the caller)."""


def key_thumbprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """The RFC 7638 thumbprint of an EC public key (its key id)."""
    from jwt.algorithms import ECAlgorithm

    return jwk_thumbprint(ECAlgorithm.to_jwk(public_key, as_dict=True))


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: ec.EllipticCurvePrivateKey
    algorithm: str = "ES256"

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.private_key.public_key()

    @classmethod
    def generate(cls, algorithm: str = "ES256", kid: str | None = None) -> SigningKey:
        if algorithm not in _CURVES:
            raise ValueError(f"unsupported algorithm {algorithm}")
        return cls(
            kid or uuid.uuid4().hex[:16], ec.generate_private_key(_CURVES[algorithm]), algorithm
        )

    def public_pem(self) -> bytes:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def public_jwk(self) -> dict[str, Any]:
        from jwt.algorithms import ECAlgorithm

        jwk: dict[str, Any] = ECAlgorithm.to_jwk(self.public_key, as_dict=True)
        jwk.update({"kid": self.kid, "alg": self.algorithm, "use": "sig"})
        return jwk


def load_or_create_signing_key(path: Path | str, algorithm: str = "ES256") -> SigningKey:
    """A service's token-signing key, created on first use and written 0600."""
    path = Path(path)
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TokenError(f"{path} does not hold an EC private key")
        alg = "ES384" if key.curve.name == "secp384r1" else "ES256"
        return SigningKey(path.stem, key, alg)
    key_obj = SigningKey.generate(algorithm, kid=path.stem)
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key_obj.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return key_obj


class ReplayCache:
    """Remembers ``jti`` values until ``remember_until`` (the end of the window in which the
    token would still be accepted: ``exp`` plus the verifier's leeway); a second sighting within
    that window is a replay. In process memory: a service that restarts, or runs several
    processes, uses :class:`trust.jti_store.DbReplayCache` instead."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def check_and_remember(self, jti: str, remember_until: float) -> None:
        now = time.time()
        with self._lock:
            if len(self._seen) > 10_000:
                self._seen = {k: v for k, v in self._seen.items() if v >= now}
            if jti in self._seen and self._seen[jti] >= now:
                raise TokenError("token replayed (jti already used)")
            self._seen[jti] = remember_until


@dataclass
class TokenIssuer:
    issuer: str
    key: SigningKey
    default_ttl: int = 300

    def issue(
        self,
        subject: str,
        audience: str,
        *,
        scopes: Iterable[str] = (),
        ttl: int | None = None,
        claims: Mapping[str, Any] | None = None,
    ) -> str:
        ttl = self.default_ttl if ttl is None else ttl
        if not 0 < ttl <= MAX_TTL_SECONDS:
            raise ValueError(f"token lifetime must be 1..{MAX_TTL_SECONDS} s")
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
        }
        scope_list = list(scopes)
        if scope_list:
            payload["scope"] = " ".join(scope_list)
        if claims:
            payload.update(claims)
        return jwt.encode(
            payload,
            self.key.private_key,
            algorithm=self.key.algorithm,
            headers={"kid": self.key.kid},
        )


@dataclass
class TokenVerifier:
    """Verifies tokens from known issuers. ``keys`` maps kid → public key."""

    issuer: str | Iterable[str]
    audience: str
    keys: dict[str, Any] = field(default_factory=dict)  # kid → EC (or, if allowed, RSA) key
    replay_cache: ReplayCache | None = None
    leeway: int = 5
    max_lifetime: int = MAX_TTL_SECONDS
    # Accepted ``alg`` values (default: this project's own, ES256/ES384). A verifier of client
    # assertions widens it (SMART Backend Services: RS384 and ES384); the key of ``kid`` must
    # still be of the algorithm's kind, PyJWT refuses an RSA key for ``ES…`` and the reverse.
    algorithms: tuple[str, ...] = ALLOWED_ALGORITHMS
    # ``iat`` is required for our own tokens; SMART client assertions may omit it, and then the
    # lifetime is measured from now (``exp`` at most ``max_lifetime`` ahead).
    require_iat: bool = True

    def add_key(self, kid: str, public_key: Any) -> None:
        self.keys[kid] = public_key

    def verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenError(f"malformed token: {exc}") from None
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise TokenError(f"token algorithm {alg!r} is not accepted")
        key = self.keys.get(str(header.get("kid")))
        if key is None:
            raise TokenError("token signed by an unknown key")
        issuers = [self.issuer] if isinstance(self.issuer, str) else list(self.issuer)
        required = ["exp", "iss", "aud", "jti", "sub"] + (["iat"] if self.require_iat else [])
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[str(alg)],
                audience=self.audience,
                issuer=issuers,
                leeway=self.leeway,
                options={"require": required},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("token expired") from None
        except jwt.InvalidAudienceError:
            raise TokenError("token audience is wrong") from None
        except jwt.InvalidIssuerError:
            raise TokenError("token issuer is not trusted") from None
        except jwt.InvalidSignatureError:
            raise TokenError("token signature is invalid") from None
        except jwt.PyJWTError as exc:
            raise TokenError(f"token refused: {exc}") from None
        start = claims["iat"] if "iat" in claims else time.time()
        if claims["exp"] - start > self.max_lifetime:
            raise TokenError("token lifetime exceeds the allowed maximum")
        if self.replay_cache is not None:
            # Remembered for as long as the token could still be accepted: exp + leeway.
            self.replay_cache.check_and_remember(
                str(claims["jti"]), float(claims["exp"]) + self.leeway
            )
        return claims


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url) of a public EC JWK: what a relying service pins
    to trust exactly one issuer key (``ipjms consent key-pin`` prints the registry's)."""
    import base64
    import hashlib
    import json

    if jwk.get("kty") != "EC" or not all(isinstance(jwk.get(k), str) for k in ("crv", "x", "y")):
        raise TokenError("only EC public keys (crv, x, y) are pinned")
    members = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()
