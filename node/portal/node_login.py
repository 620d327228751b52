"""The staff pages as a first-party SMART app of their own node: authorization code + PKCE.

The portal feature registers the public client :data:`STAFF_CLIENT_ID` at startup (loopback
redirect URIs, any port — RFC 8252 §7.3 — plus the node's public ``https`` URL when it has
one). A sign-in is: :func:`authorize_url` (state, nonce, S256 challenge; the verifier stays in
the server-side session) → the node's own login page (``/auth/authorize``: throttle, audit of
failures) → :func:`redeem` at the callback, through the same ``AuthService`` calls and checks as
``POST /auth/token`` (public app, one-time code, redirect URI, PKCE verifier), then the
``id_token``'s nonce is checked."""

from __future__ import annotations

from urllib.parse import urlencode

from node.auth.accounts import AccountError
from node.auth.roles import ROLE_SCOPES
from node.auth.service import AuthService, TokenGrant
from node.auth.smart_apps import SmartApp
from servicekit.outcome import BadRequest
from trust.tokens import TokenError, TokenVerifier

__all__ = ["STAFF_CLIENT_ID", "CALLBACK", "register_client", "authorize_url", "redeem"]

STAFF_CLIENT_ID = "ipjms-node-pages"
CALLBACK = "/app/callback"
#: the rights of every role that has pages; the node grants only what the account holds
SCOPES = " ".join(
    dict.fromkeys(
        ["openid", "fhirUser"]
        + [s for role in ("doctor", "nurse", "patient") for s in ROLE_SCOPES[role]]
    )
)


def register_client(auth: AuthService, public_url: str | None) -> SmartApp:
    """The pages' client, registered once (kept as it is when already there)."""
    existing = auth.apps.get_app(STAFF_CLIENT_ID)
    if existing is not None:
        return existing
    uris = [f"http://127.0.0.1{CALLBACK}", f"http://localhost{CALLBACK}"]
    if public_url and public_url.startswith("https://"):
        uris.append(public_url.rstrip("/") + CALLBACK)
    try:
        app, _ = auth.apps.add_app(
            STAFF_CLIENT_ID, uris, name="This node's web pages", scopes=SCOPES
        )
    except AccountError:  # another worker registered it first
        found = auth.apps.get_app(STAFF_CLIENT_ID)
        if found is None:
            raise
        return found
    return app


def authorize_url(
    redirect_uri: str, aud: str, state: str, nonce: str, challenge: str, language: str
) -> str:
    """``language``: the session's, asked of the node's login page (``ui_locales``, OIDC)."""
    query = {
        "response_type": "code",
        "client_id": STAFF_CLIENT_ID,
        "redirect_uri": redirect_uri,
        "scope": SCOPES,
        "state": state,
        "nonce": nonce,
        "aud": aud,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "ui_locales": language,
    }
    return f"/auth/authorize?{urlencode(query)}"


def redeem(
    auth: AuthService, code: str, redirect_uri: str, verifier: str, nonce: str
) -> TokenGrant:
    """The code exchanged as ``POST /auth/token`` would (OAuthError — a 400 — when refused)."""
    if not code:
        raise BadRequest("the sign-in did not return a code")
    app = auth.authenticate_app(STAFF_CLIENT_ID, None, None)
    grant = auth.authorization_code_grant(app, code, redirect_uri, verifier)
    if grant.id_token is None:
        raise BadRequest("the sign-in returned no id_token")
    issuer = str(auth.settings.base_url)
    verifier_ = TokenVerifier(issuer, STAFF_CLIENT_ID, {auth.key.kid: auth.key.public_key})
    try:
        claims = verifier_.verify(grant.id_token)
    except TokenError:
        raise BadRequest("the sign-in returned an id_token that does not verify") from None
    if claims.get("nonce") != nonce:
        raise BadRequest("the sign-in's nonce does not match; sign in again")
    return grant
