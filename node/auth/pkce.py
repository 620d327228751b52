"""PKCE (RFC 7636), S256 only (SMART App Launch 2: ``plain`` is not allowed). Pure."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

__all__ = ["s256_challenge", "verifier_matches", "valid_challenge", "valid_verifier"]

# RFC 7636 §4.1: 43–128 characters of [A-Z a-z 0-9 - . _ ~]
_VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")
# base64url of a SHA-256 digest, no padding: exactly 43 characters
_CHALLENGE = re.compile(r"^[A-Za-z0-9\-_]{43}$")


def s256_challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def valid_verifier(verifier: str) -> bool:
    return bool(_VERIFIER.match(verifier))


def valid_challenge(challenge: str) -> bool:
    return bool(_CHALLENGE.match(challenge))


def verifier_matches(verifier: str, challenge: str) -> bool:
    """Does ``verifier`` hash to ``challenge`` (constant-time comparison)?"""
    if not valid_verifier(verifier):
        return False
    return hmac.compare_digest(s256_challenge(verifier), challenge)
