"""OAuth 2.0 error responses (RFC 6749 §5.2): what the token endpoint answers instead of a FHIR
``OperationOutcome``, so OAuth and SMART client libraries can read why they were refused.

:class:`OAuthError` is a :class:`~servicekit.outcome.FhirError` (so code that only knows
FhirErrors still maps it to a 4xx); the token route turns any error into :func:`oauth_error_body`.
"""

from __future__ import annotations

from typing import Any

from servicekit.outcome import BadRequest, FhirError, Unauthorized

__all__ = ["OAuthError", "oauth_error_body", "as_oauth_error"]

# RFC 6749 §5.2 error codes (and RFC 8628/7009 are not used here).
ERROR_CODES = (
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
)


class OAuthError(FhirError):
    """An OAuth error code and a human-readable description (no secrets, no PHI)."""

    def __init__(
        self,
        error: str,
        description: str,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if error not in ERROR_CODES:
            raise ValueError(f"unknown OAuth error code {error}")
        if status is None:
            status = 401 if error == "invalid_client" else 400
        if status == 401:
            headers = {"WWW-Authenticate": "Basic", **(headers or {})}
        super().__init__(description, status=status, headers=headers)
        self.error = error


def as_oauth_error(exc: FhirError, grant_type: str | None) -> OAuthError:
    """Any error raised while answering a token request, as an OAuthError: a refused client
    assertion is ``invalid_client``, a refused password/code/refresh token ``invalid_grant``,
    a scope problem ``invalid_scope``, anything else ``invalid_request``."""
    if isinstance(exc, OAuthError):
        return exc
    text = exc.diagnostics
    if text.startswith("invalid_scope:"):
        return OAuthError("invalid_scope", text.removeprefix("invalid_scope:").strip())
    if exc.status == 429:  # a locked account (trust.login_throttle): keep 429 and Retry-After
        return OAuthError("invalid_grant", text, status=429, headers=exc.headers)
    if isinstance(exc, Unauthorized):
        if grant_type == "client_credentials":
            return OAuthError("invalid_client", text)
        return OAuthError("invalid_grant", text)
    if isinstance(exc, BadRequest):
        return OAuthError("invalid_request", text)
    return OAuthError("invalid_request", text, status=exc.status if exc.status < 500 else 400)


def oauth_error_body(exc: OAuthError) -> dict[str, Any]:
    return {"error": exc.error, "error_description": exc.diagnostics}
