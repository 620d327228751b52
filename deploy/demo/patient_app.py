"""What the demo's patient app does: sign in once at the consent registry (OpenID Connect,
authorization code + PKCE S256) and use that one token at a node and at the registry."""

from __future__ import annotations

import base64
import hashlib
import secrets
from urllib.parse import parse_qs, urlsplit

import httpx

__all__ = ["CLIENT_ID", "REDIRECT", "sign_in"]

CLIENT_ID = "ipjms-patient-app"  # registered by default at the registry (consent/settings.py)
REDIRECT = "http://127.0.0.1/callback"


def sign_in(registry: str, username: str, password: str) -> dict[str, str]:
    """The token response (``access_token``, ``id_token``, ``patient``)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    params = {"response_type": "code", "client_id": CLIENT_ID, "redirect_uri": REDIRECT,
              "scope": "openid patient/*.rs patient/Observation.cu patient/Consent.cruds "
                       "patient/Disclosure.rs", "state": secrets.token_urlsafe(8),
              "nonce": secrets.token_urlsafe(8), "code_challenge": challenge.rstrip(b"=").decode(),
              "code_challenge_method": "S256"}  # fmt: skip
    form = {**params, "username": username, "password": password}
    r = httpx.post(f"{registry}/oidc/authorize", data=form, timeout=60)
    if r.status_code != 303:
        raise RuntimeError(f"sign-in refused: {r.status_code} {r.text[:200]}")
    query = parse_qs(urlsplit(r.headers["location"]).query)
    if query.get("state") != [params["state"]]:
        raise RuntimeError("sign-in answered with another state")
    r = httpx.post(f"{registry}/oidc/token", data={"grant_type": "authorization_code",
                   "code": query["code"][0], "redirect_uri": REDIRECT, "client_id": CLIENT_ID,
                   "code_verifier": verifier}, timeout=60)  # fmt: skip
    if r.status_code != 200:
        raise RuntimeError(f"token request refused: {r.status_code} {r.text[:200]}")
    return dict(r.json())
