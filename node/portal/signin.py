"""Sign-in, sign-out, language, and who is signed in: staff sign in through this node's own
SMART authorization-code + PKCE flow (node/portal/node_login.py), patients through the consent
registry's OpenID Connect flow; the session holds the access token (never sent to the
browser); every page verifies it and authorises through ``node.auth.deps`` — the same
decision the API makes for a bearer token."""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from node.auth.authorize_routes import public_base_url
from node.auth.deps import Access, authorise, authorise_whole_organisation
from node.auth.principal import Principal
from node.auth.service import AuthService
from node.portal import node_login
from node.portal.panel import person_name
from node.portal.registry_link import RegistryLink, new_pkce
from servicekit.outcome import BadRequest, Forbidden, ServiceUnavailable, Unauthorized
from servicekit.web import WebKit, page_route_class

__all__ = ["router", "kit_of", "signed_in", "clinician", "patient_access", "PREFIX"]

PREFIX = "/app"
CLINICIANS = ("doctor", "nurse")
router = APIRouter(route_class=page_route_class("portal"), include_in_schema=False)


def kit_of(request: Request) -> WebKit:
    kit = getattr(request.app.state, "portal", None)
    if kit is None:  # the feature's startup hook has not run (never in a served node)
        raise Forbidden("the pages are not running")
    return kit  # type: ignore[no-any-return]


def signed_in(request: Request) -> Principal:
    """The signed-in Principal (its token verified now), else 401 → the sign-in page."""
    kit = kit_of(request)
    session = kit.session(request)
    if not session.user:
        raise Unauthorized("sign in")
    auth: AuthService = request.app.state.auth
    try:
        return auth.principal(session.user["token"])
    except Unauthorized:
        kit.sign_out(request)  # the token expired: the session ends with it
        raise


def clinician(request: Request, resource_type: str, interaction: str) -> Principal:
    """A doctor's or nurse's Principal allowed ``interaction`` on every ``resource_type``
    (patient sessions are refused by the seam: 403)."""
    principal = authorise_whole_organisation(signed_in(request), resource_type, interaction)
    if principal.role not in CLINICIANS:
        raise Forbidden("these pages are for doctors and nurses")
    return principal


def patient_access(request: Request, resource_type: str, interaction: str) -> Access:
    """A patient's Access (the compartment it must apply) for ``resource_type``."""
    access = authorise(signed_in(request), resource_type, interaction)
    if access.compartment is None:
        raise Forbidden("these pages are for patients")
    return access


async def _form(request: Request) -> dict[str, str]:
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


@router.get(PREFIX)
@router.get(PREFIX + "/")
async def start(request: Request) -> Response:
    kit = kit_of(request)
    user = kit.session(request).user
    if not user:
        return kit.redirect(f"{PREFIX}/sign-in")
    return kit.redirect(f"{PREFIX}/me" if user["role"] == "patient" else f"{PREFIX}/panel")


@router.get(PREFIX + "/sign-in")
async def sign_in_page(request: Request) -> Response:
    return kit_of(request).render(
        request,
        "sign_in.html",
        app_title=_title(request),
        staff_sign_in=f"{PREFIX}/sign-in/node",
        patient_sign_in=_patient_link(request),
    )


@router.get(PREFIX + "/sign-in/node")
async def staff_sign_in(request: Request) -> Response:
    """Staff sign-in: to this node's own login page (SMART authorization code + S256 PKCE)."""
    kit = kit_of(request)
    verifier, challenge = new_pkce()
    state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    session = kit.session(request)
    session.pending["node_login"] = {"state": state, "nonce": nonce, "verifier": verifier}
    aud = f"{public_base_url(request)}/fhir"
    return kit.redirect(
        node_login.authorize_url(
            _staff_callback(request), aud, state, nonce, challenge, session.lang
        )
    )


@router.get(node_login.CALLBACK)
async def staff_callback(request: Request, code: str = "", state: str = "") -> Response:
    """The node's login page came back: check the state, exchange the code, open the session."""
    kit = kit_of(request)
    pending = kit.session(request).pending.pop("node_login", None)
    if not pending or not state or not secrets.compare_digest(state, pending["state"]):
        raise BadRequest("this sign-in was not started here, or has expired; sign in again")
    if request.query_params.get("error"):
        raise BadRequest("the sign-in was refused; sign in again")
    auth: AuthService = request.app.state.auth
    grant = await run_in_threadpool(
        node_login.redeem,
        auth,
        code,
        _staff_callback(request),
        pending["verifier"],
        pending["nonce"],
    )
    principal = auth.principal(grant.access_token)
    user: dict[str, Any] = {
        "token": grant.access_token,
        "role": principal.role,
        "subject": principal.subject,
        "display": principal.subject,
    }
    kit.sign_in(request, user)
    return kit.redirect(PREFIX + "/")


def _staff_callback(request: Request) -> str:
    return str(request.base_url).rstrip("/") + node_login.CALLBACK


@router.get(PREFIX + "/patient/sign-in")
async def patient_sign_in(request: Request) -> Response:
    """The region's one patient login: to the consent registry (OpenID Connect, code + PKCE)."""
    kit = kit_of(request)
    registry = _registry(request)
    verifier, challenge = new_pkce()
    state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    kit.session(request).pending["oidc"] = {"state": state, "verifier": verifier}
    return kit.redirect(registry.authorize_url(_callback(request), state, nonce, challenge))


@router.get(PREFIX + "/oidc/callback")
async def oidc_callback(request: Request, code: str = "", state: str = "") -> Response:
    kit = kit_of(request)
    pending = kit.session(request).pending.pop("oidc", None)
    if not pending or not state or not secrets.compare_digest(state, pending["state"]):
        raise BadRequest("this sign-in was not started here, or has expired; sign in again")
    registry = _registry(request)
    tokens = await run_in_threadpool(registry.redeem, code, _callback(request), pending["verifier"])
    auth: AuthService = request.app.state.auth
    principal = await run_in_threadpool(auth.principal, str(tokens.get("access_token", "")))
    if principal.role != "patient" or not principal.patient_id:
        raise Forbidden("this sign-in is for patients")
    store = request.app.state.store
    patient = await run_in_threadpool(store.read, "Patient", principal.patient_id)
    kit.sign_in(
        request,
        {
            "token": tokens["access_token"],
            "role": "patient",
            "subject": principal.subject,
            "display": person_name(patient),
            "regional": True,
        },
    )
    return kit.redirect(f"{PREFIX}/me")


def _registry(request: Request) -> RegistryLink:
    url = request.app.state.services.settings.consent.url
    if not url:
        raise ServiceUnavailable("this node has no consent registry for patient sign-in")
    return RegistryLink(str(url))


def _callback(request: Request) -> str:
    return str(request.base_url).rstrip("/") + f"{PREFIX}/oidc/callback"


@router.post(PREFIX + "/sign-out")
async def sign_out(request: Request) -> Response:
    kit = kit_of(request)
    kit.sign_out(request)
    return kit.redirect(f"{PREFIX}/sign-in")


@router.post(PREFIX + "/language")
async def language(request: Request) -> Response:
    kit = kit_of(request)
    form = await _form(request)
    target = form.get("next", "")
    if not target.startswith(PREFIX) or "//" in target:
        target = PREFIX + "/"
    response = kit.redirect(target)
    kit.set_language(request, response, form.get("lang", ""))
    return response


def _patient_link(request: Request) -> str | None:
    url = request.app.state.services.settings.consent.url
    return f"{PREFIX}/patient/sign-in" if url else None


def _title(request: Request) -> str:
    return str(request.app.state.services.settings.name)
