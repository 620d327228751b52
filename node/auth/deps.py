"""The one dependency every API route uses to authenticate and authorise: ``require_scope``.

    @router.get("/fhir/{rtype}/{rid}")
    def read(rtype: str, rid: str, principal: Principal = Depends(require_scope(None, "read"))):
        compartment = principal.compartment_for(rtype, "read")   # None or the patient id

``resource_type=None`` takes the type from the route's ``{rtype}`` path parameter.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request

from node.auth.principal import Principal
from node.auth.service import AuthService
from servicekit.outcome import Unauthorized

__all__ = ["require_scope", "authenticate", "Principal"]


def authenticate(request: Request) -> Principal:
    """The caller's Principal from the ``Authorization: Bearer`` header, else 401."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("a bearer access token is required")
    auth: AuthService = request.app.state.auth
    principal = auth.principal(token.strip())
    request.state.principal = principal
    return principal


def require_scope(resource_type: str | None, interaction: str) -> Callable[[Request], Principal]:
    """Dependency: an authenticated Principal whose scopes allow ``interaction`` on the type
    (401 without a valid token, 403 without the scope). Compartment limits of patient tokens
    are applied by the route via ``principal.compartment_for``."""

    def dependency(request: Request) -> Principal:
        principal = authenticate(request)
        rtype = resource_type or request.path_params.get("rtype", "")
        principal.compartment_for(rtype, interaction)  # raises Forbidden
        return principal

    return dependency
