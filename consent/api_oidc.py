"""The registry's OpenID Connect routes for patients (the model is in consent/oidc.py).

| route | what |
|---|---|
| ``GET /.well-known/openid-configuration`` | discovery (issuer, endpoints, ``jwks_uri``, S256) |
| ``GET /oidc/jwks.json`` | the public key that signs patient access and ID tokens |
| ``GET /oidc/authorize`` | the sign-in page for an authorization request (HTML form) |
| ``POST /oidc/authorize`` | user name + password → 303 to ``redirect_uri?code&state`` |
| ``POST /oidc/token`` | ``authorization_code`` + ``code_verifier`` → access token + ID token |

A request whose ``client_id`` or ``redirect_uri`` does not check is answered here (400
OperationOutcome) and never redirected. A wrong password is 401, a locked account 429 with
``Retry-After`` (``consent/patient_login.py``). The token endpoint answers OAuth2 error JSON
(RFC 6749 §5.2).
"""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from consent.auth import Authenticator
from consent.http_io import read_form
from consent.oidc import (
    OIDC_SCOPES,
    REGION_PATIENT_SCOPES,
    AuthorizationCodes,
    AuthorizationRequest,
    OidcError,
    PublicClient,
    at_hash,
    grant_patient_scopes,
)
from consent.patient_login import check_patient_password
from servicekit.openapi_bodies import form_body
from servicekit.outcome import BadRequest, FhirError

__all__ = ["router"]

router = APIRouter(tags=["oidc"])
_S = {"type": "string"}
_AUTH_PARAMS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
)
_LOGIN_FORM = form_body({**{k: _S for k in _AUTH_PARAMS}, "username": _S, "password": _S})
_TOKEN_FORM = form_body(
    {"grant_type": _S, "code": _S, "redirect_uri": _S, "client_id": _S, "code_verifier": _S},
    ("grant_type",),
)
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _clients(request: Request) -> dict[str, PublicClient]:
    return request.app.state.oidc_clients  # type: ignore[no-any-return]


def _parse(request: Request, params: dict[str, str]) -> AuthorizationRequest:
    try:
        return AuthorizationRequest.parse(params, _clients(request))
    except OidcError as exc:
        raise BadRequest(f"{exc.error}: {exc.description}") from None


@router.get("/.well-known/openid-configuration")
def discovery(request: Request) -> JSONResponse:
    issuer: str = request.app.state.issuer
    return JSONResponse(
        {
            "issuer": issuer,
            "authorization_endpoint": f"{issuer}/oidc/authorize",
            "token_endpoint": f"{issuer}/oidc/token",
            "jwks_uri": f"{issuer}/oidc/jwks.json",
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "scopes_supported": [*OIDC_SCOPES, *REGION_PATIENT_SCOPES],
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce"],
        },
        headers={"Cache-Control": "max-age=300"},
    )


@router.get("/oidc/jwks.json")
def oidc_jwks(request: Request) -> JSONResponse:
    return JSONResponse(request.app.state.token_jwks, headers={"Cache-Control": "max-age=300"})


def _login_page(auth: AuthorizationRequest, error: str | None = None) -> str:
    hidden = {
        "response_type": "code",
        "client_id": auth.client.client_id,
        "redirect_uri": auth.redirect_uri,
        "scope": " ".join(auth.scope),
        "state": auth.state,
        "nonce": auth.nonce or "",
        "code_challenge": auth.code_challenge,
        "code_challenge_method": "S256",
    }
    fields = "".join(
        f'<input type="hidden" name="{k}" value="{html.escape(v)}">' for k, v in hidden.items()
    )
    message = f'<p role="alert">{html.escape(error)}</p>' if error else ""
    return (
        '<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">'
        "<title>登录 · Sign in</title></head><body><main><h1>登录 · Sign in</h1>"
        f'{message}<form method="post" action="/oidc/authorize">{fields}'
        '<label>用户名 · User name <input name="username" autocomplete="username" required>'
        '</label><label>密码 · Password <input name="password" type="password" '
        'autocomplete="current-password" required></label>'
        '<button type="submit">登录 · Sign in</button></form></main></body></html>'
    )


@router.get("/oidc/authorize")
def authorize_page(request: Request) -> HTMLResponse:
    auth = _parse(request, dict(request.query_params))
    return HTMLResponse(_login_page(auth), headers=_NO_STORE)


@router.post("/oidc/authorize", openapi_extra=_LOGIN_FORM)
async def authorize(request: Request) -> Response:
    form = await read_form(request)
    auth = _parse(request, form)
    username, password = form.get("username", ""), form.get("password", "")
    if not username or not password:
        raise BadRequest("username and password are required")
    try:
        pseudonym = await check_patient_password(request, username, password)
    except FhirError as exc:
        if "text/html" in request.headers.get("accept", ""):
            return HTMLResponse(
                _login_page(auth, exc.diagnostics), status_code=exc.status, headers=exc.headers
            )
        raise
    codes: AuthorizationCodes = request.app.state.oidc_codes
    code = await run_in_threadpool(codes.issue, auth, pseudonym)
    query = {"code": code, **({"state": auth.state} if auth.state else {})}
    sep = "&" if "?" in auth.redirect_uri else "?"
    return RedirectResponse(
        f"{auth.redirect_uri}{sep}{urlencode(query)}", status_code=303, headers=_NO_STORE
    )


def _oauth_error(exc: OidcError) -> JSONResponse:
    return JSONResponse(
        {"error": exc.error, "error_description": exc.description},
        status_code=exc.status,
        headers=_NO_STORE,
    )


@router.post("/oidc/token", openapi_extra=_TOKEN_FORM)
async def token(request: Request) -> JSONResponse:
    try:
        form = await read_form(request)
    except BadRequest as exc:
        return _oauth_error(OidcError("invalid_request", exc.diagnostics))
    if form.get("grant_type") != "authorization_code":
        return _oauth_error(
            OidcError("unsupported_grant_type", "grant_type must be authorization_code")
        )
    codes: AuthorizationCodes = request.app.state.oidc_codes
    client_id = form.get("client_id", "")
    if client_id not in _clients(request):
        return _oauth_error(OidcError("invalid_client", "unknown client_id", 401))
    try:
        redeemed = await run_in_threadpool(
            codes.redeem,
            form.get("code", ""),
            client_id=client_id,
            redirect_uri=form.get("redirect_uri", ""),
            verifier=form.get("code_verifier", ""),
        )
    except OidcError as exc:
        return _oauth_error(exc)
    auth: Authenticator = request.app.state.authenticator
    body: dict[str, Any] = auth.patient_token(
        redeemed.pseudonym,
        grant_patient_scopes(redeemed.scope),
        client_id=redeemed.client_id,
        auth_time=redeemed.auth_time,
    )
    body["id_token"] = auth.id_token(
        redeemed.pseudonym,
        redeemed.client_id,
        nonce=redeemed.nonce,
        auth_time=redeemed.auth_time,
        at_hash=at_hash(body["access_token"]),
    )
    return JSONResponse(body, headers=_NO_STORE)
