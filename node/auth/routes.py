"""``POST /auth/token``: the OAuth 2.0 token endpoint (password, client_credentials,
authorization_code and refresh_token grants; errors as OAuth 2.0 error JSON, RFC 6749 §5.2),
and ``POST /auth/accounts``: account creation by an admin token."""

from __future__ import annotations

import base64
import binascii
import json
from urllib.parse import parse_qs, unquote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from node.auth.accounts import AccountError
from node.auth.deps import authenticate
from node.auth.oauth_errors import OAuthError, as_oauth_error, oauth_error_body
from node.auth.roles import ACCOUNT_ADMIN_SCOPE
from node.auth.service import AuthService, TokenGrant
from servicekit.openapi_bodies import form_body, json_body
from servicekit.outcome import BadRequest, FhirError, Forbidden, operation_outcome

__all__ = ["router"]

router = APIRouter()
_MAX_FORM_BYTES = 64 * 1024


_S = {"type": "string"}
_TOKEN_FORM = form_body(
    {
        "grant_type": {
            "type": "string",
            "enum": ["password", "client_credentials", "authorization_code", "refresh_token"],
        },
        "username": _S,
        "password": _S,
        "scope": _S,
        "client_assertion_type": _S,
        "client_assertion": _S,
        "code": _S,
        "redirect_uri": _S,
        "code_verifier": _S,
        "client_id": _S,
        "client_secret": _S,
        "refresh_token": _S,
    },
    ("grant_type",),
)
_ACCOUNT = json_body(
    {"username": _S, "password": _S, "role": _S, "patient": _S}, ("username", "password", "role")
)


_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    """``Authorization: Basic`` client credentials (RFC 6749 §2.3.1: form-encoded, then
    base64), or None."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, secret = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise OAuthError("invalid_client", "malformed Basic credentials") from None
    if not sep:
        raise OAuthError("invalid_client", "malformed Basic credentials")
    return unquote(user), unquote(secret)


async def _token_form(request: Request) -> dict[str, str]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise OAuthError(
            "invalid_request", "token requests must be application/x-www-form-urlencoded"
        )
    body = await request.body()
    if len(body) > _MAX_FORM_BYTES:
        raise OAuthError("invalid_request", "token request too large")
    try:
        parsed = parse_qs(body.decode(), keep_blank_values=True)
    except UnicodeDecodeError:
        raise OAuthError("invalid_request", "token request is not valid UTF-8") from None
    repeated = sorted(k for k, v in parsed.items() if len(v) > 1)
    if repeated:  # RFC 6749 §3.2: parameters must not be included more than once
        raise OAuthError("invalid_request", f"repeated parameter(s): {', '.join(repeated)}")
    return {k: v[0] for k, v in parsed.items()}


async def _grant(request: Request, form: dict[str, str]) -> TokenGrant:
    auth: AuthService = request.app.state.auth
    grant_type = form.get("grant_type")
    if grant_type == "password":
        return await run_in_threadpool(
            auth.password_grant,
            form.get("username", ""),
            form.get("password", ""),
            form.get("scope"),
        )
    if grant_type == "client_credentials":
        token_urls = [
            f"{auth.settings.base_url}/auth/token",
            str(request.url.replace(query="")),
        ]
        return await run_in_threadpool(
            auth.client_credentials_grant,
            form.get("client_assertion_type"),
            form.get("client_assertion"),
            form.get("scope"),
            token_urls,
        )
    if grant_type in ("authorization_code", "refresh_token"):
        app = await run_in_threadpool(
            auth.authenticate_app,
            form.get("client_id"),
            _basic_credentials(request),
            form.get("client_secret"),
        )
        if form.get("client_id") and form["client_id"] != app.client_id:
            raise OAuthError("invalid_client", "client_id does not match the client credentials")
        if grant_type == "authorization_code":
            return await run_in_threadpool(
                auth.authorization_code_grant,
                app,
                form.get("code", ""),
                form.get("redirect_uri"),
                form.get("code_verifier"),
            )
        return await run_in_threadpool(
            auth.refresh_token_grant, app, form.get("refresh_token", ""), form.get("scope")
        )
    raise OAuthError(
        "unsupported_grant_type",
        f"unsupported grant_type {grant_type!r}; use authorization_code, refresh_token, "
        "client_credentials or password",
    )


@router.post("/auth/token", tags=["auth"], openapi_extra=_TOKEN_FORM)
async def token(request: Request) -> JSONResponse:
    """OAuth2 token request (``application/x-www-form-urlencoded``). Errors are OAuth 2.0 error
    JSON (``{"error": "invalid_grant", "error_description": …}``), never an OperationOutcome."""
    form: dict[str, str] = {}
    try:
        form = await _token_form(request)
        grant = await _grant(request, form)
    except FhirError as exc:
        error = as_oauth_error(exc, form.get("grant_type"))
        return JSONResponse(
            oauth_error_body(error),
            status_code=error.status,
            headers={**_NO_STORE, **error.headers},
        )
    return JSONResponse(grant.response(), headers=_NO_STORE)


@router.post("/auth/accounts", tags=["auth"], openapi_extra=_ACCOUNT)
async def add_account(request: Request) -> JSONResponse:
    """Create an account (needs the admin role's ``node/accounts.manage`` scope).

    Body (JSON): ``{"username", "password", "role", "patient"?}``. Answers an OperationOutcome.
    """
    principal = authenticate(request)
    if not principal.has_scope(ACCOUNT_ADMIN_SCOPE):
        raise Forbidden(f"account management needs the {ACCOUNT_ADMIN_SCOPE} scope")
    body = await request.body()
    if len(body) > _MAX_FORM_BYTES:
        raise BadRequest("request too large")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), str) for k in ("username", "password", "role")
    ):
        raise BadRequest("expected a JSON object with string username, password and role")
    patient = data.get("patient")
    if patient is not None and not isinstance(patient, str):
        raise BadRequest("patient must be a Patient id string")
    auth: AuthService = request.app.state.auth
    try:
        account = await run_in_threadpool(
            auth.accounts.add_user,
            data["username"],
            data["password"],
            data["role"],
            patient_id=patient,
        )
    except AccountError as exc:
        raise BadRequest(str(exc)) from None
    return JSONResponse(
        operation_outcome(
            f"{account.role} account {account.username} created",
            code="informational",
            severity="information",
        ),
        status_code=201,
        media_type="application/fhir+json",
    )
