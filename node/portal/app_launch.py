"""The doctor pages' SMART app launch (SMART App Launch 2, "EHR launch"): from a patient's
journey page a doctor or nurse starts a registered app for the patient in view.

The page lists the apps registered with a launch URL and the ``launch`` scope
(:meth:`node.auth.smart_apps.SmartAppStore.launchable_apps`); the button is a form (CSRF token)
that opens a launch context through the same function as ``POST /auth/launch``
(:func:`node.auth.authorize_routes.open_launch`: the practitioner in session, the patient behind
the page's opaque handle, the app) and sends the browser to the app's launch URL with ``iss``
(this node's FHIR base) and ``launch`` (the opaque, single-use handle) — no patient identifier.
The app's authorize request brings the handle back; the sign-in must be the same practitioner
at this node. The journey page's CSP lets its forms go to the listed apps' origins only.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

from node.auth.authorize_routes import open_launch, public_base_url
from node.auth.smart_apps import SmartApp
from node.portal.signin import PREFIX, clinician, kit_of, router
from servicekit.outcome import BadRequest, NotFound
from servicekit.web.kit import csp_allowing_forms_to

__all__ = ["launchable_apps", "launch_csp"]


def launchable_apps(request: Request) -> list[SmartApp]:
    return request.app.state.auth.apps.launchable_apps()  # type: ignore[no-any-return]


def launch_csp(apps: list[SmartApp]) -> str:
    """The journey page's CSP: its launch form may redirect to these apps' origins."""
    return csp_allowing_forms_to(a.launch_origin for a in apps if a.launch_origin)


@router.post(PREFIX + "/patients/{handle}/launch")
async def launch(request: Request, handle: str) -> Response:
    principal = clinician(request, "Patient", "read")
    reference = kit_of(request).session(request).resolve(handle)
    if reference is None or not reference.startswith("Patient/"):
        raise NotFound("unknown handle")
    form: Any = await request.form()
    client_id = str(form.get("app", ""))
    app = await run_in_threadpool(request.app.state.auth.apps.get_app, client_id)
    if app is None or not app.launchable or app.launch_url is None:
        raise BadRequest("choose an app registered for launch from these pages")
    token = await run_in_threadpool(
        open_launch, request, principal, reference.split("/", 1)[1], client_id
    )
    query = urlencode({"iss": f"{public_base_url(request)}/fhir", "launch": token})
    joiner = "&" if "?" in app.launch_url else "?"
    return kit_of(request).redirect(f"{app.launch_url}{joiner}{query}")
