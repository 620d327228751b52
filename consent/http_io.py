"""Reading request bodies and writing FHIR responses for the registry's routes (one place)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from servicekit.outcome import FHIR_JSON, BadRequest

__all__ = ["read_json", "fhir_response", "json_response", "read_form"]


async def _body(request: Request) -> bytes:
    # Size, encoding, nesting and control characters were checked at the edge
    # (servicekit.request_limits, installed in consent/app.py) before any route ran.
    return await request.body()


async def read_json(request: Request) -> Any:
    body = await _body(request)
    if not body:
        raise BadRequest("a JSON body is required")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("body is not valid JSON") from None


async def read_form(request: Request) -> dict[str, str]:
    await _body(request)
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("application/x-www-form-urlencoded"):
        raise BadRequest("use application/x-www-form-urlencoded for token requests")
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def fhir_response(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(body, status_code=status, media_type=FHIR_JSON, headers=headers)


def json_response(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store"})
