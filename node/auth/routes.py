"""``POST /auth/token``: OAuth2 token endpoint (password and client_credentials grants)."""

from __future__ import annotations

from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from node.auth.service import AuthService
from trust.outcome import BadRequest

__all__ = ["router"]

router = APIRouter()
_MAX_FORM_BYTES = 64 * 1024


@router.post("/auth/token", tags=["auth"])
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
