"""Staff sign in to the pages through the node's own SMART authorization-code flow (issue 17:
"the web pages of this project sign in through the same flows"), in process: the real node app
through FastAPI's TestClient on a loopback base URL. The start link redirects to
``/auth/authorize`` with an S256 challenge (the verifier stays in the server-side session); the
pages open only after the callback exchanged the code; a callback with a wrong or missing state,
or a code that is not this session's, is a 400 with no session; failed passwords at the node's
login page are throttled and audited as ``authorization_code`` failures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient

from deploy.demo.staff_sign_in import login_form, sign_in_staff
from node.app import create_app
from node.auth.authorization import redirect_uri_registered
from node.auth.service import LoginFailure
from node.portal.node_login import STAFF_CLIENT_ID
from node.settings import load_settings

PASSWORD = "a long doctor password 8"
BASE = "http://127.0.0.1:8123"  # a loopback port the client was not registered with


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    folder: Path = tmp_path_factory.mktemp("staff-sign-in")
    app = create_app(load_settings(folder / "node", org_id="org-signin", name="Sign-in clinic"))
    app.state.auth.accounts.add_user("dr-code", PASSWORD, "doctor")
    app.state.auth.accounts.add_user("nurse-code", PASSWORD, "nurse")
    failures: list[LoginFailure] = []
    app.state.auth.failure_sinks.append(failures.append)
    app.state.failures_seen = failures
    with TestClient(app, base_url=BASE):
        yield app


def _client(app: Any) -> TestClient:
    return TestClient(app, base_url=BASE, follow_redirects=False)


def _to_login(client: TestClient) -> tuple[str, dict[str, list[str]]]:
    start = client.get("/app/sign-in/node")
    assert start.status_code == 303
    target = urlsplit(start.headers["location"])
    return start.headers["location"], parse_qs(target.query)


def test_sign_in_goes_through_authorize_with_s256_and_the_code_exchange(app: Any) -> None:
    client = _client(app)
    assert client.get("/app/panel").status_code == 303  # not signed in
    assert app.state.auth.apps.get_app(STAFF_CLIENT_ID) is not None  # registered at startup
    location, query = _to_login(client)
    assert urlsplit(location).path == "/auth/authorize"
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43
    assert query["client_id"] == [STAFF_CLIENT_ID] and "openid" in query["scope"][0].split()
    assert query["redirect_uri"] == [f"{BASE}/app/callback"] and query["nonce"][0]
    assert "code_verifier" not in location  # the verifier never leaves the server
    login = client.get(location)
    assert login.status_code == 200 and "password" in login.text
    sent = client.post(
        "/auth/authorize",
        data={**login_form(login.text), "username": "dr-code", "password": PASSWORD},
    )
    assert sent.status_code == 303
    back = urlsplit(sent.headers["location"])
    assert back.path == "/app/callback" and parse_qs(back.query)["state"] == query["state"]
    assert client.get("/app/panel").status_code == 303  # a code alone opens nothing
    done = client.get(sent.headers["location"])
    assert done.status_code == 303 and done.headers["location"] == "/app/"
    assert client.get("/app/panel").status_code == 200
    # the code was used once: the same callback again (no pending sign-in) opens no session
    again = _client(app)
    assert again.get(sent.headers["location"]).status_code == 400
    assert again.get("/app/panel").status_code == 303


def test_a_nurse_gets_the_nurse_rights_only(app: Any) -> None:
    client = _client(app)
    assert sign_in_staff(client, "nurse-code", PASSWORD).status_code == 303
    session = next(
        s for s in app.state.portal.sessions._sessions.values() if s.user and
        s.user["subject"] == "nurse-code"
    )  # fmt: skip
    principal = app.state.auth.principal(session.user["token"])
    assert principal.role == "nurse"
    claims = app.state.auth.verifier.verify(session.user["token"])
    resource_scopes = sorted(s for s in claims["scope"].split() if "/" in s)
    assert resource_scopes == ["user/*.rs", "user/Observation.cruds"]


def test_the_callback_refuses_a_wrong_or_missing_state_and_a_foreign_code(app: Any) -> None:
    client = _client(app)
    location, query = _to_login(client)
    login = client.get(location)
    sent = client.post(
        "/auth/authorize",
        data={**login_form(login.text), "username": "dr-code", "password": PASSWORD},
    )
    code = parse_qs(urlsplit(sent.headers["location"]).query)["code"][0]
    wrong = client.get("/app/callback", params={"code": code, "state": "x" * 32})
    assert wrong.status_code == 400 and "sign in again" in wrong.text
    assert client.get("/app/panel").status_code == 303
    # the pending sign-in is spent by the refused attempt: the right state now is refused too
    late = client.get("/app/callback", params={"code": code, "state": query["state"][0]})
    assert late.status_code == 400
    assert client.get("/app/panel").status_code == 303
    # a fresh sign-in's state with another session's code: the PKCE verifier does not match
    _, fresh = _to_login(client)
    stolen = client.get("/app/callback", params={"code": code, "state": fresh["state"][0]})
    assert stolen.status_code == 400
    assert client.get("/app/panel").status_code == 303
    missing = _client(app).get("/app/callback", params={"code": code})
    assert missing.status_code == 400


def test_failed_passwords_at_the_login_page_are_audited_and_throttled(app: Any) -> None:
    app.state.auth.accounts.add_user("dr-locked", PASSWORD, "doctor")
    client = _client(app)
    seen = app.state.failures_seen
    before = len(seen)
    answers = []
    for _ in range(8):
        location, _ = _to_login(client)
        login = client.get(location)
        answers.append(
            client.post(
                "/auth/authorize",
                data={**login_form(login.text), "username": "dr-locked", "password": "wrong"},
            ).status_code
        )
    assert answers[0] == 401 and answers[-1] == 429
    assert {f.grant_type for f in seen[before:]} == {"authorization_code"}
    assert any(f.reason == "locked" for f in seen[before:])
    assert client.get("/app/panel").status_code == 303


def test_only_a_loopback_http_redirect_uri_may_differ_by_its_port() -> None:
    registered = ("http://127.0.0.1/app/callback", "https://node.example/app/callback")
    assert redirect_uri_registered("http://127.0.0.1:8123/app/callback", registered)
    assert redirect_uri_registered("https://node.example/app/callback", registered)
    for refused in (
        "https://node.example:8443/app/callback",  # not loopback: exact only
        "http://127.0.0.1:8123/app/other",  # another path
        "http://127.0.0.1.evil.example:8123/app/callback",
        "http://localhost:8123/app/callback",  # not registered under this name
        "http://127.0.0.1:99999/app/callback",  # not a port
    ):
        assert not redirect_uri_registered(refused, registered), refused


def test_a_code_issued_for_another_nonce_opens_no_session(app: Any) -> None:
    """The authorize request altered on the way (here: its nonce): the state and the PKCE
    verifier still match, but the id_token's nonce is not the one this session asked for."""
    client = _client(app)
    location, query = _to_login(client)
    altered = location.replace(query["nonce"][0], "n" * 32)
    login = client.get(altered)
    sent = client.post(
        "/auth/authorize",
        data={**login_form(login.text), "username": "dr-code", "password": PASSWORD},
    )
    assert sent.status_code == 303
    refused = client.get(sent.headers["location"])
    assert refused.status_code == 400 and "nonce" in refused.text
    assert client.get("/app/panel").status_code == 303


def test_the_login_page_speaks_the_sessions_language_and_refuses_a_bad_ui_locales(
    app: Any,
) -> None:
    """The portal asks the node's login page for its session's language (OIDC ``ui_locales``);
    zh-CN is this region's default. A third-party app without ui_locales gets English; a
    malformed value is an OAuth2 error back to the app, not a page in some language."""
    client = _client(app)  # a new session: the region's default language
    location, query = _to_login(client)
    assert query["ui_locales"] == ["zh-CN"]
    login = client.get(location)
    assert "<html lang='zh-CN'>" in login.text and "用户名" in login.text and "密码" in login.text
    wrong = client.post(
        "/auth/authorize",
        data={**login_form(login.text), "username": "dr-code", "password": "not it at all"},
    )
    assert wrong.status_code == 401 and "用户名或密码错误" in wrong.text
    client = _client(app)
    client.cookies.set("ipjms_lang", "en")  # the language switch's cookie: a session in English
    location, query = _to_login(client)
    assert query["ui_locales"] == ["en"]
    english = client.get(location)
    assert "<html lang='en'>" in english.text and "Username" in english.text
    plain = client.get(location.replace("&ui_locales=en", ""))
    assert "<html lang='en'>" in plain.text
    bad = client.get(location.replace("ui_locales=en", "ui_locales=%3Cscript%3E"))
    assert bad.status_code == 303 and "error=invalid_request" in bad.headers["location"]
