"""CSRF: every request that changes something (any method but GET/HEAD/OPTIONS) must carry the
session's token, as the ``X-CSRF-Token`` header (htmx requests: static/app.js adds it) or the
``csrf_token`` form field (plain forms). Compared in constant time."""

from __future__ import annotations

import hmac

__all__ = ["CsrfRefused", "check_csrf", "SAFE_METHODS", "CSRF_HEADER", "CSRF_FIELD"]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"


class CsrfRefused(Exception):
    """The request changes state and does not carry the session's CSRF token."""


def check_csrf(method: str, expected: str, header: str | None, field: str | None) -> None:
    if method.upper() in SAFE_METHODS:
        return
    given = header or field or ""
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        raise CsrfRefused("missing or wrong CSRF token")
