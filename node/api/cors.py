"""CORS for browser apps on other origins (SMART apps, the web pages): only the origins listed
in ``[api] cors_origins``; none by default. Credentials are bearer tokens in the
``Authorization`` header, never cookies, so ``allow_credentials`` stays off."""

from __future__ import annotations

from typing import Any

from starlette.middleware.cors import CORSMiddleware

__all__ = ["install_cors", "ALLOWED_HEADERS", "EXPOSED_HEADERS"]

ALLOWED_HEADERS = (
    "Authorization",
    "Content-Type",
    "Accept",
    "If-Match",
    "If-None-Match",
    "If-None-Exist",
    "If-Modified-Since",
    "Prefer",
    "Idempotency-Key",
)
EXPOSED_HEADERS = ("Location", "Content-Location", "ETag", "Last-Modified")


def install_cors(app: Any, origins: list[str]) -> None:
    app.add_middleware(
        CORSMiddleware,
        allow_origins=[o.rstrip("/") for o in origins],
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        allow_headers=list(ALLOWED_HEADERS),
        expose_headers=list(EXPOSED_HEADERS),
        max_age=600,
    )
