"""FHIR ``OperationOutcome`` errors: raised inside any service, mapped to a response once.

Domain code raises :class:`FhirError` (or a subclass); each FastAPI app installs
:func:`install_error_handlers` so every failure reaches the client as an OperationOutcome with the
right status, never a stack trace.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = [
    "FhirError",
    "BadRequest",
    "NotFound",
    "Gone",
    "Conflict",
    "PreconditionFailed",
    "Unauthorized",
    "Forbidden",
    "Unprocessable",
    "PayloadTooLarge",
    "ServiceUnavailable",
    "operation_outcome",
    "install_error_handlers",
    "FHIR_JSON",
]

FHIR_JSON = "application/fhir+json"
log = logging.getLogger("ipjms.errors")


def operation_outcome(
    diagnostics: str,
    *,
    code: str = "invalid",
    severity: str = "error",
    expression: list[str] | None = None,
) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = expression
    return {"resourceType": "OperationOutcome", "issue": [issue]}


class FhirError(Exception):
    """An error a client caused or must know about; carries HTTP status and FHIR issue code."""

    status: int = 400
    code: str = "invalid"

    def __init__(
        self,
        diagnostics: str,
        *,
        expression: list[str] | None = None,
        status: int | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.diagnostics = diagnostics
        self.expression = expression
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.diagnostics, code=self.code, expression=self.expression)


class BadRequest(FhirError):
    status, code = 400, "invalid"


class Unauthorized(FhirError):
    status, code = 401, "login"

    def __init__(self, diagnostics: str = "authentication required", **kw: Any) -> None:
        kw.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(diagnostics, **kw)


class Forbidden(FhirError):
    status, code = 403, "forbidden"


class NotFound(FhirError):
    status, code = 404, "not-found"


class Gone(FhirError):
    status, code = 410, "deleted"


class Conflict(FhirError):
    status, code = 409, "conflict"


class PreconditionFailed(FhirError):
    status, code = 412, "conflict"


class PayloadTooLarge(FhirError):
    status, code = 413, "too-costly"


class Unprocessable(FhirError):
    status, code = 422, "processing"


class ServiceUnavailable(FhirError):
    """A service this one depends on (consent registry, coordinator) cannot be reached or did
    not answer in time. Transient: the client may try again; nothing was changed."""

    status, code = 503, "transient"


def install_error_handlers(app: Any) -> None:
    """Map every error of a FastAPI app to an OperationOutcome (one place, per app)."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    def respond(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
        return JSONResponse(body, status_code=status, media_type=FHIR_JSON, headers=headers)

    @app.exception_handler(FhirError)
    async def _fhir_error(_req: Request, exc: FhirError) -> Any:
        return respond(exc.status, exc.outcome(), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> Any:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
        return respond(400, operation_outcome("; ".join(parts) or "invalid request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> Any:
        code = {401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported"}.get(
            exc.status_code, "processing"
        )
        return respond(
            exc.status_code,
            operation_outcome(str(exc.detail), code=code),
            getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, exc: Exception) -> Any:
        # Log the type only: messages from deep inside may quote clinical data.
        log.error("unhandled error: %s", type(exc).__name__, exc_info=False)
        return respond(500, operation_outcome("internal error", code="exception"))
