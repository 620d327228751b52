"""``POST /auth/token``: OAuth2 token endpoint (password and client_credentials grants), and
``POST /auth/accounts``: account creation by an admin token."""

from __future__ import annotations

import json
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from node.auth.accounts import AccountError
from node.auth.deps import authenticate
from node.auth.roles import ACCOUNT_ADMIN_SCOPE
from node.auth.service import AuthService
from servicekit.openapi_bodies import form_body, json_body
from servicekit.outcome import BadRequest, Forbidden, operation_outcome

__all__ = ["router"]

router = APIRouter()
_MAX_FORM_BYTES = 64 * 1024


_S = {"type": "string"}
_TOKEN_FORM = form_body(
    {
        "grant_type": {"type": "string", "enum": ["password", "client_credentials"]},
        "username": _S,
        "password": _S,
        "scope": _S,
        "client_assertion_type": _S,
        "client_assertion": _S,
    },
    ("grant_type",),
)
_ACCOUNT = json_body(
    {"username": _S, "password": _S, "role": _S, "patient": _S}, ("username", "password", "role")
)


@router.post("/auth/token", tags=["auth"], openapi_extra=_TOKEN_FORM)
async def token(request: Request) -> JSONResponse:
    """OAuth2 token request (``application/x-www-form-urlencoded``)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise BadRequest("token requests must be application/x-www-form-urlencoded")
    body = await request.body()
    if len(body) > _MAX_FORM_BYTES:
        raise BadRequest("token request too large")
    try:
        form = {k: v[0] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}
    except UnicodeDecodeError:
        raise BadRequest("token request is not valid UTF-8") from None
    auth: AuthService = request.app.state.auth
    grant_type = form.get("grant_type")
    if grant_type == "password":
        grant = await run_in_threadpool(
            auth.password_grant,
            form.get("username", ""),
            form.get("password", ""),
            form.get("scope"),
        )
    elif grant_type == "client_credentials":
        token_urls = [
            f"{auth.settings.base_url}/auth/token",
            str(request.url.replace(query="")),
        ]
        grant = await run_in_threadpool(
            auth.client_credentials_grant,
            form.get("client_assertion_type"),
            form.get("client_assertion"),
            form.get("scope"),
            token_urls,
        )
    else:
        raise BadRequest(
            f"unsupported grant_type {grant_type!r}; use password or client_credentials"
        )
    return JSONResponse(
        grant.response(), headers={"Cache-Control": "no-store", "Pragma": "no-cache"}
    )


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
