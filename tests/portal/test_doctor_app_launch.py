"""The SMART launch button on the doctor's journey page (issue 16): the real node app of
``node.app.create_app`` (SQLite in a temp dir) in a TestClient, a doctor signed in through the
node's own login. The button (a form with the CSRF token) opens an EHR launch context for the
patient in view and sends the browser to the app's launch URL with only ``iss`` and the opaque
``launch`` handle; the app's authorize request with that handle, signed in as the same doctor,
gets a token whose launch context is that patient. The handle is refused (OAuth2
``invalid_request``, no code) at another node, to that node's doctor, and to another doctor of
this node; no CSRF token, an unregistered app or another session's handle open nothing."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from deploy.demo.staff_sign_in import login_form, sign_in_staff
from node.app import create_app
from node.auth.pkce import s256_challenge
from node.auth.tables import launch_contexts
from node.exchange.workflow import new_request
from node.settings import load_settings

PASSWORD = "a long doctor password 8"
PID = "p-launch-page"
APP_ORIGIN = "http://127.0.0.1:9999"
LAUNCH_URL = f"{APP_ORIGIN}/launch"
REDIRECT = f"{APP_ORIGIN}/callback"
BASE = "http://127.0.0.1"


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert found is not None
    return found.group(1)


def _node(folder: Path, org_id: str) -> Any:
    app = create_app(load_settings(folder / org_id, org_id=org_id, name=f"{org_id} clinic"))
    app.state.auth.accounts.add_user("dr-launch", PASSWORD, "doctor")
    app.state.auth.apps.add_app("chart-app", [REDIRECT], name="Chart app", launch_url=LAUNCH_URL)
    return app


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, TestClient]]:
    folder: Path = tmp_path_factory.mktemp("app-launch")
    here, there = _node(folder, "org-launch"), _node(folder, "org-elsewhere")
    store = here.state.store
    store.update("Patient", PID, {"resourceType": "Patient", "id": PID,
                 "name": [{"family": "Qian", "given": ["Li"]}]}, writer="test:seed")  # fmt: skip
    sr, task = new_request(kind="referral", patient_id=PID, requester="org-launch",
                           requester_name="Launch clinic", performer="hosp-x",
                           reason="routine review")  # fmt: skip
    store.update_many([sr, task], writer="test:seed")
    here.state.auth.accounts.add_user("dr-other", PASSWORD, "doctor")
    here.state.auth.apps.add_app("no-launch-url", [REDIRECT], name="Plain app")
    with TestClient(here, base_url=BASE) as a, TestClient(there, base_url=BASE) as b:
        for client in (a, b):
            assert sign_in_staff(client, "dr-launch", PASSWORD).status_code == 303
        yield {"here": a, "there": b}


def _patient_path(client: TestClient) -> str:
    listing = client.get("/app/referrals").text
    found = re.search(r'href="(/app/patients/[^"]+)"', listing)
    assert found is not None
    return found.group(1)


def _issued(client: TestClient) -> int:
    with client.app.state.engine.connect() as conn:  # type: ignore[attr-defined]
        return int(conn.execute(select(func.count()).select_from(launch_contexts)).scalar_one())


def _authorize(client: TestClient, launch: str, verifier: str) -> dict[str, str]:
    return {
        "response_type": "code", "client_id": "chart-app", "redirect_uri": REDIRECT,
        "scope": "launch openid fhirUser patient/*.rs", "state": "st-" + secrets.token_hex(4),
        "aud": f"{BASE}/fhir", "code_challenge": s256_challenge(verifier),
        "code_challenge_method": "S256", "launch": launch,
    }  # fmt: skip


def _sign_in_app(client: TestClient, params: dict[str, str], username: str) -> dict[str, list[str]]:
    """The app's authorize request, the node's login page, the redirect back to the app."""
    page = client.get("/auth/authorize", params=params, follow_redirects=False)
    if page.status_code == 303:  # refused before any sign-in: an OAuth2 error to the app
        return parse_qs(urlsplit(page.headers["location"]).query)
    assert page.status_code == 200, page.text
    form = {**login_form(page.text), "username": username, "password": PASSWORD}
    r = client.post("/auth/authorize", data=form, follow_redirects=False)
    assert r.status_code == 303, r.text
    assert r.headers["location"].startswith(REDIRECT + "?")
    return parse_qs(urlsplit(r.headers["location"]).query)


def _launch(client: TestClient, path: str) -> str:
    page = client.get(path)
    r = client.post(f"{path}/launch", data={"app": "chart-app", "csrf_token": _csrf(page.text)},
                    follow_redirects=False)  # fmt: skip
    assert r.status_code == 303, r.text
    location = r.headers["location"]
    assert location.startswith(LAUNCH_URL + "?") and PID not in location
    query = parse_qs(urlsplit(location).query)
    assert set(query) == {"iss", "launch"} and query["iss"] == [f"{BASE}/fhir"]
    return query["launch"][0]


@pytest.mark.parametrize(("lang", "label"), [("zh-CN", "启动"), ("en", "Launch")])
def test_the_journey_page_offers_registered_apps_in_both_languages(
    nodes: dict[str, TestClient], lang: str, label: str
) -> None:
    client = nodes["here"]
    path = _patient_path(client)
    page = client.get(path)
    client.post("/app/language", data={"lang": lang, "csrf_token": _csrf(page.text)})
    page = client.get(path)
    assert page.status_code == 200 and f'lang="{lang}"' in page.text
    form = page.text.split('id="launch-form"', 1)[1].split("</form>", 1)[0]
    assert '<option value="chart-app">Chart app</option>' in form
    assert "no-launch-url" not in form  # no launch URL: not offered
    assert f'id="launch">{label}</button>' in form and 'name="csrf_token"' in form
    csp = page.headers["content-security-policy"]
    assert f"form-action 'self' {APP_ORIGIN};" in csp and "script-src 'self';" in csp


def test_the_button_launches_the_app_with_the_patient_in_view(
    nodes: dict[str, TestClient],
) -> None:
    client = nodes["here"]
    launch = _launch(client, _patient_path(client))
    assert PID not in launch
    verifier = secrets.token_urlsafe(48)
    query = _sign_in_app(client, _authorize(client, launch, verifier), "dr-launch")
    assert "code" in query, query
    r = client.post("/auth/token", data={
        "grant_type": "authorization_code", "code": query["code"][0], "redirect_uri": REDIRECT,
        "client_id": "chart-app", "code_verifier": verifier,
    })  # fmt: skip
    assert r.status_code == 200, r.text
    grant = r.json()
    assert grant["patient"] == PID  # the launch context resolved to the patient in view
    record = client.get(f"/fhir/Patient/{PID}",
                        headers={"Authorization": f"Bearer {grant['access_token']}"})  # fmt: skip
    assert record.status_code == 200 and record.json()["name"][0]["family"] == "Qian"


def test_another_nodes_doctor_and_another_doctor_cannot_use_the_launch(
    nodes: dict[str, TestClient],
) -> None:
    here, there = nodes["here"], nodes["there"]
    verifier = secrets.token_urlsafe(48)
    launch = _launch(here, _patient_path(here))
    # the other node (same app and user names registered there) does not know this handle
    elsewhere = _sign_in_app(there, _authorize(there, launch, verifier), "dr-launch")
    assert elsewhere["error"] == ["invalid_request"] and "code" not in elsewhere
    assert "unknown" in elsewhere["error_description"][0]
    # another doctor of this node: refused, no code
    other = _sign_in_app(here, _authorize(here, launch, verifier), "dr-other")
    assert other["error"] == ["invalid_request"] and "code" not in other
    assert "another user" in other["error_description"][0]
    # another node's doctor cannot launch with a handle of this node's pages either
    path = _patient_path(here)
    page = there.get("/app/panel")
    r = there.post(f"{path}/launch", data={"app": "chart-app", "csrf_token": _csrf(page.text)},
                   follow_redirects=False)  # fmt: skip
    assert r.status_code == 404


def test_refusals_open_no_launch_context(nodes: dict[str, TestClient]) -> None:
    client = nodes["here"]
    path = _patient_path(client)
    token = _csrf(client.get(path).text)
    before = _issued(client)
    assert client.post(f"{path}/launch", data={"app": "chart-app"}).status_code == 403
    for app in ("no-launch-url", "nobody", ""):
        r = client.post(f"{path}/launch", data={"app": app, "csrf_token": token},
                        follow_redirects=False)  # fmt: skip
        assert r.status_code == 400, app
    form = {"app": "chart-app", "csrf_token": token}
    r = client.post("/app/patients/not-a-handle/launch", data=form, follow_redirects=False)
    assert r.status_code == 404
    assert _issued(client) == before
