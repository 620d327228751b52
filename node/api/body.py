"""Reading FHIR JSON request bodies and writing FHIR responses."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from servicekit.outcome import FHIR_JSON, BadRequest, FhirError

__all__ = [
    "read_resource",
    "read_json",
    "fhir_response",
    "version_headers",
    "UnsupportedMediaType",
]

_JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")


class UnsupportedMediaType(FhirError):
    status, code = 415, "not-supported"


async def read_resource(request: Request) -> dict[str, Any]:
    """The request body as a JSON object (a FHIR resource); 400/415 otherwise."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype and ctype not in _JSON_TYPES:
        raise UnsupportedMediaType(
            f"content type {ctype!r} is not supported; send application/fhir+json"
        )
    # Size, encoding, nesting and control characters were checked at the edge
    # (servicekit.request_limits) before this route ran.
    raw = await request.body()
    if not raw.strip():
        raise BadRequest("request body is empty; expected a FHIR resource")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict) or "resourceType" not in body:
        raise BadRequest("request body must be a FHIR resource (a JSON object with resourceType)")
    return body


async def read_json(request: Request, allowed: tuple[str, ...]) -> tuple[str, Any]:
    """The body's media type and its JSON value (any JSON, e.g. a JSON Patch array)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in allowed:
        raise UnsupportedMediaType(
            f"content type {ctype or '(none)'!r} is not supported; send one of {', '.join(allowed)}"
        )
    raw = await request.body()
    try:
        return ctype, json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None


def version_headers(resource: dict[str, Any]) -> dict[str, str]:
    """ETag (``W/"versionId"``) and Last-Modified of a stored resource."""
    meta = resource.get("meta") or {}
    headers: dict[str, str] = {}
    if meta.get("versionId"):
        headers["ETag"] = f'W/"{meta["versionId"]}"'
    if meta.get("lastUpdated"):
        try:
            when = datetime.fromisoformat(str(meta["lastUpdated"]).replace("Z", "+00:00"))
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            headers["Last-Modified"] = format_datetime(when.astimezone(UTC), usegmt=True)
        except ValueError:
            pass
    return headers


def fhir_response(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(body, status_code=status, media_type=FHIR_JSON, headers=headers)
