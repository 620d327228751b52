"""Public keys of registered clients, and the algorithms each may sign with.

SMART Backend Services (and ``private_key_jwt`` generally) require servers to accept ``RS384``
and ``ES384`` client assertions; ``ES256`` is accepted too (this project's own clients use it).
A client registers its public key as PEM (EC P-256/P-384, or RSA of at least 2048 bits), or a
JWKS URL the node fetches when the client asks for a token (cached for a few minutes; HTTPS, or
plain HTTP to a loopback address for local tools and tests).

The algorithm a key may verify follows from its type, so an RSA key never checks an ``ES…``
signature nor an EC key an ``RS…`` one (no algorithm confusion).
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

__all__ = [
    "CLIENT_ASSERTION_ALGORITHMS",
    "ClientKeyError",
    "load_client_public_key",
    "algorithms_for",
    "check_jwks_url",
    "JwksCache",
]

CLIENT_ASSERTION_ALGORITHMS = ("RS384", "ES384", "ES256")
MIN_RSA_BITS = 2048
_EC_ALGORITHMS = {"secp256r1": ("ES256",), "secp384r1": ("ES384",)}
_MAX_JWKS_BYTES = 64 * 1024


class ClientKeyError(ValueError):
    """A client key or JWKS cannot be used (message safe to show)."""


def _check_key(key: Any) -> Any:
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _EC_ALGORITHMS:
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ClientKeyError(f"RSA client keys must have at least {MIN_RSA_BITS} bits")
        return key
    raise ClientKeyError(
        "client keys must be EC P-256 (ES256), EC P-384 (ES384) or RSA (RS384) public keys"
    )


def load_client_public_key(pem: str) -> Any:
    """A registered client's PEM public key, checked to be of an accepted kind."""
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except ValueError:
        raise ClientKeyError("public key is not a PEM-encoded public key") from None
    return _check_key(key)


def algorithms_for(key: Any) -> tuple[str, ...]:
    """The assertion algorithms ``key`` may verify."""
    if isinstance(key, rsa.RSAPublicKey):
        return ("RS384",)
    return _EC_ALGORITHMS[key.curve.name]


def check_jwks_url(url: str) -> str:
    """A JWKS URL a client may register: ``https://…``, or ``http://`` to a loopback host."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname:
        host = parts.hostname
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if loopback:
            return url
    raise ClientKeyError("jwks_url must be an https:// URL (or http:// to a loopback address)")


class JwksCache:
    """Fetches a client's JWKS (``kid`` → key), keeping it ``ttl`` seconds. A ``kid`` not in the
    cached set triggers one refetch (a client that rotated its keys), at most every 10 s."""

    def __init__(self, ttl: float = 300.0, timeout: float = 5.0) -> None:
        self.ttl, self.timeout = ttl, timeout
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def key(self, url: str, kid: str | None) -> Any:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(url)
        keys = cached[1] if cached and now - cached[0] < self.ttl else None
        if keys is None or (kid not in keys and now - cached[0] > 10):  # type: ignore[index]
            keys = self._fetch(url)
            with self._lock:
                self._cache[url] = (now, keys)
        if kid is None and len(keys) == 1:
            return next(iter(keys.values()))
        if kid not in keys:
            raise ClientKeyError("the client's JWKS has no key with the assertion's kid")
        return keys[kid]

    def _fetch(self, url: str) -> dict[str, Any]:
        import httpx  # here: the offline commands (init, user add) load this module, not this

        try:
            with httpx.Client(timeout=self.timeout, follow_redirects=False) as http:
                r = http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError:
            raise ClientKeyError("the client's JWKS URL cannot be reached") from None
        if r.status_code != 200 or len(r.content) > _MAX_JWKS_BYTES:
            raise ClientKeyError(f"the client's JWKS URL answered {r.status_code}")
        try:
            document = json.loads(r.content)
            keys = document["keys"]
            if not isinstance(keys, list):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise ClientKeyError("the client's JWKS is not a JSON Web Key Set") from None
        found: dict[str, Any] = {}
        for jwk in keys:
            if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK(jwk).key
                found[str(jwk.get("kid"))] = _check_key(key)
            except (jwt.PyJWTError, ClientKeyError, ValueError, TypeError):
                continue  # an unusable key in the set is skipped, not fatal
        if not found:
            raise ClientKeyError("the client's JWKS holds no usable signing key")
        return found
