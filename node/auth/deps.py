"""The dependencies every API route uses to authenticate and authorise.

A scope check must not be able to pass while its constraint is dropped: a ``patient/`` scope
reaches only the caller's own compartment, and a route that ignores that would hand a patient
everyone's data. So there are two checks, and the safe one is the default:

* :func:`require_scope` — for routes that act on the whole organisation's data (the exchange,
  enrolment, …). It answers only tokens whose scope reaches *every* resource of the type (``user/``
  or ``system/`` context) and refuses a compartment-limited (patient) token with 403 before the
  route runs. It returns the :class:`Principal`.
* :func:`require_access` — for the few routes that can serve a patient their own compartment
  (FHIR read, search, history, ``$everything``). It returns an :class:`Access`, the principal
  *together with* the compartment the route must apply (``None``: no limit); a route opting in
  has the constraint in hand, in the one object it gets.

    @router.get("/exchange/outbox")
    def outbox(principal: Principal = Depends(require_scope("Task", "search"))): ...

    @router.get("/fhir/{rtype}/{rid}")
    def read(rtype: str, rid: str, access: Access = Depends(require_access(None, "read"))):
        ensure_in_compartment(store, rtype, rid, access.compartment)

``resource_type=None`` takes the type from the route's ``{rtype}`` path parameter. The property
test ``tests/access/test_route_access.py`` drives every route with every kind of token against
the declared access table (``tests/access/access_table.toml``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Request

from node.auth.principal import Principal
from node.auth.service import AuthService
from servicekit.outcome import Forbidden, Unauthorized

__all__ = [
    "require_scope",
    "require_access",
    "authenticate",
    "authorise",
    "authorise_whole_organisation",
    "Access",
    "Principal",
]


@dataclass(frozen=True)
class Access:
    """An authorised caller and the limit the route must apply: ``compartment`` is None when
    the token reaches every resource of the type, else the id of the only patient it reaches."""

    principal: Principal
    compartment: str | None


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


def authorise(principal: Principal, resource_type: str, interaction: str) -> Access:
    """The one scope decision, for any authenticated Principal (API token or web session):
    the Access with the compartment to apply, else Forbidden."""
    return Access(principal, principal.compartment_for(resource_type, interaction))


def authorise_whole_organisation(
    principal: Principal, resource_type: str, interaction: str
) -> Principal:
    """:func:`authorise` for routes acting on the whole organisation's data: a
    compartment-limited (patient) principal is refused (Forbidden)."""
    if authorise(principal, resource_type, interaction).compartment is not None:
        raise Forbidden("this route is not available to patient-context tokens")
    return principal


def _access(request: Request, resource_type: str | None, interaction: str) -> Access:
    principal = authenticate(request)
    rtype = resource_type or request.path_params.get("rtype", "")
    return authorise(principal, rtype, interaction)  # raises Forbidden


def require_scope(resource_type: str | None, interaction: str) -> Callable[[Request], Principal]:
    """Dependency: an authenticated Principal whose scopes allow ``interaction`` on every
    resource of the type (401 without a valid token; 403 without the scope, and 403 for a
    patient-context token, whose compartment limit this route does not apply)."""

    def dependency(request: Request) -> Principal:
        principal = authenticate(request)
        rtype = resource_type or request.path_params.get("rtype", "")
        return authorise_whole_organisation(principal, rtype, interaction)

    return dependency


def require_access(resource_type: str | None, interaction: str) -> Callable[[Request], Access]:
    """Dependency for routes that serve patient-context tokens their own compartment: the
    Principal and the compartment the route must apply (401 / 403 as :func:`require_scope`)."""

    def dependency(request: Request) -> Access:
        return _access(request, resource_type, interaction)

    return dependency
