"""SMART App Launch 2 and Backend Services at the node (issue 17, must-show 1 and 4): discovery,
the authorization-code flow with PKCE end to end (patient and practitioner with the patient
picker), id_token, refresh-token rotation, and every refusal — a wrong verifier, an expired or
replayed code, an unregistered redirect URI — as OAuth 2.0 errors with nothing changed;
Backend Services with RS384 and ES384 keys (registered PEM or JWKS URL), ``iat`` optional,
``jti`` replay refused. One node for the module (SQLite)."""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from html import unescape
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import update

from node.auth.pkce import s256_challenge
from node.auth.tables import authorization_codes, launch_contexts
from node_api.node_harness import PASSWORD, Node, make_node

BASE = "http://testserver"
FHIR_BASE = f"{BASE}/fhir"
REDIRECT = "http://127.0.0.1:9999/callback"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture(scope="module")
def smart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    data_dir: Path = tmp_path_factory.mktemp("smart") / "node"
    yield from make_node(
        None,  # type: ignore[arg-type]  # SQLite in the data dir
        data_dir,
        api={"cors_origins": ["https://app.example.org"]},
    )


@pytest.fixture(scope="module")
def people(smart: Node) -> dict[str, str]:
    doctor = smart.login("doctor1")
    ids = {}
    for name in ("Alice", "Bob"):
        body = {"resourceType": "Patient", "name": [{"family": name, "given": ["Test"]}]}
        r = smart.post("/fhir/Patient", body, doctor)
        assert r.status_code == 201, r.text
        ids[name.lower()] = r.json()["id"]
        obs = {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": f"Patient/{ids[name.lower()]}"},
        }
        assert smart.post("/fhir/Observation", obs, doctor).status_code == 201
    accounts = smart.app.state.auth.accounts
    accounts.add_user("alice", PASSWORD, "patient", patient_id=ids["alice"])
    accounts.add_user("drwho", PASSWORD, "doctor", fhir_user="Practitioner/who-1")
    apps = smart.app.state.auth.apps
    apps.add_app("growth-chart", [REDIRECT], name="Growth chart")
    _app, secret = apps.add_app("server-app", [REDIRECT], confidential=True)
    ids["secret"] = secret or ""
    return ids


def _authorize_params(scope: str, verifier: str, **extra: str) -> dict[str, str]:
    return {
        "response_type": "code",
        "client_id": "growth-chart",
        "redirect_uri": REDIRECT,
        "scope": scope,
        "state": "st-" + secrets.token_hex(4),
        "aud": FHIR_BASE,
        "code_challenge": s256_challenge(verifier),
        "code_challenge_method": "S256",
        **extra,
    }


def _hidden_fields(page: str) -> dict[str, str]:
    return {
        unescape(k): unescape(v)
        for k, v in re.findall(r"<input type='hidden' name='([^']*)' value='([^']*)'>", page)
    }


def _sign_in(
    smart: Node, params: dict[str, str], username: str, patient: str | None = None
) -> dict[str, str]:
    """Drive the sign-in pages as a browser would; returns the redirect's query."""
    page = smart.client.get("/auth/authorize", params=params)
    assert page.status_code == 200, page.text
    assert page.headers["x-frame-options"] == "DENY"
    form = {**_hidden_fields(page.text), "username": username, "password": PASSWORD}
    r = smart.client.post("/auth/authorize", data=form, follow_redirects=False)
    if patient is not None:
        assert r.status_code == 200 and "Choose a patient" in r.text, r.text
        assert f"value='{patient}'" in r.text  # listed by the picker
        form = {**_hidden_fields(r.text), "patient": patient}
        r = smart.client.post("/auth/authorize", data=form, follow_redirects=False)
    assert r.status_code == 303, r.text
    location = r.headers["location"]
    assert location.startswith(REDIRECT + "?")
    query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    assert query["state"] == params["state"]
    return query


def _exchange(smart: Node, code: str, verifier: str, **extra: str) -> Any:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "client_id": "growth-chart",
        "code_verifier": verifier,
        **extra,
    }
    return smart.client.post("/auth/token", data=form)


def _bearer(grant: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {grant['access_token']}"}


def test_discovery_document_capability_statement_and_jwks(smart: Node) -> None:
    for path in ("/fhir/.well-known/smart-configuration", "/.well-known/smart-configuration"):
        conf = smart.client.get(path).json()
        assert conf["authorization_endpoint"] == f"{BASE}/auth/authorize"
        assert conf["token_endpoint"] == f"{BASE}/auth/token"
        assert conf["code_challenge_methods_supported"] == ["S256"]
        assert {"RS384", "ES384"} <= set(conf["token_endpoint_auth_signing_alg_values_supported"])
        assert {
            "launch-standalone",
            "context-standalone-patient",
            "permission-v2",
            "permission-v1",
            "sso-openid-connect",
            "client-confidential-asymmetric",
            "permission-offline",
        } <= set(conf["capabilities"])
        assert {"launch-ehr", "context-ehr-patient"} <= set(conf["capabilities"])
        assert "launch" in conf["scopes_supported"]
    security = smart.client.get("/fhir/metadata").json()["rest"][0]["security"]
    assert security["cors"] is True
    (ext,) = security["extension"]
    assert ext["url"] == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    uris = {e["url"]: e["valueUri"] for e in ext["extension"]}
    assert uris == {"authorize": f"{BASE}/auth/authorize", "token": f"{BASE}/auth/token"}
    (key,) = smart.client.get("/.well-known/jwks.json").json()["keys"]
    assert key["kty"] == "EC" and "d" not in key


def test_patient_standalone_launch_end_to_end(smart: Node, people: dict[str, str]) -> None:
    verifier = secrets.token_urlsafe(48)
    nonce = uuid.uuid4().hex
    params = _authorize_params(
        "launch/patient openid fhirUser offline_access patient/*.read", verifier, nonce=nonce
    )
    query = _sign_in(smart, params, "alice")
    r = _exchange(smart, query["code"], verifier)
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    grant = r.json()
    assert grant["token_type"] == "Bearer" and grant["patient"] == people["alice"]
    assert set(grant["scope"].split()) == {
        "launch/patient",
        "openid",
        "fhirUser",
        "offline_access",
        "patient/*.read",
    }
    # id_token: signed by the node's published key, for this app, with fhirUser and the nonce
    jwk = jwt.PyJWK(smart.client.get("/.well-known/jwks.json").json()["keys"][0])
    id_token = jwt.decode(grant["id_token"], jwk.key, algorithms=["ES256"], audience="growth-chart")
    assert id_token["iss"] == smart.app.state.settings.base_url
    assert id_token["fhirUser"].endswith(f"/fhir/Patient/{people['alice']}")
    assert id_token["nonce"] == nonce
    # v1 patient/*.read: Alice's own record only
    mine = smart.client.get("/fhir/Observation", headers=_bearer(grant)).json()
    assert mine["total"] == 1
    assert mine["entry"][0]["resource"]["subject"]["reference"] == f"Patient/{people['alice']}"
    assert (
        smart.client.get(f"/fhir/Patient/{people['bob']}", headers=_bearer(grant)).status_code
        == 404
    )
    assert smart.post("/fhir/Observation", {}, _bearer(grant)).status_code == 403  # read only
    # refresh: rotated; the old refresh token again revokes the family
    refresh = {"grant_type": "refresh_token", "client_id": "growth-chart"}
    r1 = smart.client.post("/auth/token", data={**refresh, "refresh_token": grant["refresh_token"]})
    assert r1.status_code == 200, r1.text
    renewed = r1.json()
    assert (
        renewed["patient"] == people["alice"] and renewed["refresh_token"] != grant["refresh_token"]
    )
    again = smart.client.post(
        "/auth/token", data={**refresh, "refresh_token": grant["refresh_token"]}
    )
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    family_gone = smart.client.post(
        "/auth/token", data={**refresh, "refresh_token": renewed["refresh_token"]}
    )
    assert family_gone.json()["error"] == "invalid_grant"


def test_practitioner_launch_with_patient_picker(smart: Node, people: dict[str, str]) -> None:
    verifier = secrets.token_urlsafe(48)
    params = _authorize_params(
        "launch/patient openid fhirUser patient/Observation.rs user/Patient.rs", verifier
    )
    query = _sign_in(smart, params, "drwho", patient=people["bob"])
    grant = _exchange(smart, query["code"], verifier).json()
    assert grant["patient"] == people["bob"] and "refresh_token" not in grant
    claims = jwt.decode(grant["access_token"], options={"verify_signature": False})
    assert claims["fhirUser"].endswith("/fhir/Practitioner/who-1")
    # patient/Observation.rs: Bob's observations only; user/Patient.rs: every patient
    obs = smart.client.get("/fhir/Observation", headers=_bearer(grant)).json()
    assert {e["resource"]["subject"]["reference"] for e in obs["entry"]} == {
        f"Patient/{people['bob']}"
    }
    assert smart.client.get("/fhir/Patient", headers=_bearer(grant)).json()["total"] >= 2


def test_bad_verifier_expired_and_replayed_codes(smart: Node, people: dict[str, str]) -> None:
    verifier = secrets.token_urlsafe(48)
    params = _authorize_params("launch/patient patient/*.rs offline_access", verifier)
    code = _sign_in(smart, params, "alice")["code"]
    # a verifier that does not match: refused, and the code is still good (nothing changed)
    wrong = _exchange(smart, code, secrets.token_urlsafe(48))
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    assert "code_verifier" in wrong.json()["error_description"]
    missing = _exchange(smart, code, "")
    assert missing.json()["error"] == "invalid_request"
    other_redirect = _exchange(smart, code, verifier, redirect_uri="http://127.0.0.1:9999/x")
    assert other_redirect.json()["error"] == "invalid_grant"
    first = _exchange(smart, code, verifier)
    assert first.status_code == 200, first.text
    # the same code again: refused, and the refresh token it produced is revoked
    replay = _exchange(smart, code, verifier)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert "already used" in replay.json()["error_description"]
    revoked = smart.client.post(
        "/auth/token",
        data={
            "grant_type": "refresh_token",
            "client_id": "growth-chart",
            "refresh_token": first.json()["refresh_token"],
        },
    )
    assert revoked.json()["error"] == "invalid_grant"
    # an expired code (its clock moved past code_ttl): refused
    code2 = _sign_in(smart, _authorize_params("patient/*.rs launch/patient", verifier), "alice")[
        "code"
    ]
    with smart.app.state.engine.begin() as conn:
        conn.execute(
            update(authorization_codes)
            .values(expires_at=time.time() - 1)
            .where(authorization_codes.c.used_at.is_(None))
        )
    expired = _exchange(smart, code2, verifier)
    assert expired.status_code == 400 and "expired" in expired.json()["error_description"]


def _open_launch(smart: Node, patient: str, headers: dict[str, str]) -> Any:
    body = {"patient": patient, "client_id": "growth-chart"}
    return smart.client.post("/auth/launch", json=body, headers=headers)


def test_ehr_launch_end_to_end(smart: Node, people: dict[str, str]) -> None:
    """The EHR (a practitioner with Bob's record open) opens a launch context; the app gets
    ``launch`` and ``iss``, sends them back with the launch scope, and its token carries Bob."""
    drwho = smart.login("drwho")
    opened = _open_launch(smart, people["bob"], drwho)
    assert opened.status_code == 201, opened.text
    ctx = opened.json()
    assert ctx["iss"] == FHIR_BASE and ctx["expires_in"] > 0
    assert people["bob"] not in ctx["launch"]  # opaque
    verifier = secrets.token_urlsafe(48)
    params = _authorize_params(
        "launch openid fhirUser patient/*.rs", verifier, launch=ctx["launch"], aud=ctx["iss"]
    )
    query = _sign_in(smart, params, "drwho")  # no picker: the context brings the patient
    r = _exchange(smart, query["code"], verifier)
    assert r.status_code == 200, r.text
    grant = r.json()
    assert grant["patient"] == people["bob"] and grant["need_patient_banner"] is True
    assert set(grant["scope"].split()) == {"launch", "openid", "fhirUser", "patient/*.rs"}
    obs = smart.client.get("/fhir/Observation", headers=_bearer(grant)).json()
    assert {e["resource"]["subject"]["reference"] for e in obs["entry"]} == {
        f"Patient/{people['bob']}"
    }
    # the same launch again (replayed): an OAuth2 error back to the app, no sign-in page
    again = _authorize_params("launch patient/*.rs", verifier, launch=ctx["launch"])
    r = smart.client.get("/auth/authorize", params=again, follow_redirects=False)
    assert r.status_code == 303
    error = parse_qs(urlsplit(r.headers["location"]).query)
    assert error["error"] == ["invalid_request"] and error["state"] == [again["state"]]
    assert "already used" in error["error_description"][0]


def test_ehr_launch_refusals(smart: Node, people: dict[str, str]) -> None:
    drwho, alice = smart.login("drwho"), smart.login("alice")
    verifier = secrets.token_urlsafe(48)

    def authorize(launch: str, scope: str = "launch patient/*.rs") -> dict[str, list[str]]:
        params = _authorize_params(scope, verifier, launch=launch)
        r = smart.client.get("/auth/authorize", params=params, follow_redirects=False)
        assert r.status_code == 303, r.text
        return parse_qs(urlsplit(r.headers["location"]).query)

    unknown = authorize("no-such-launch")
    assert unknown["error"] == ["invalid_request"] and "unknown" in unknown["error_description"][0]
    live = _open_launch(smart, people["bob"], drwho).json()["launch"]
    assert authorize(live, scope="patient/*.rs")["error"] == ["invalid_scope"]  # no launch scope
    # expired: its clock moved past the TTL
    with smart.app.state.engine.begin() as conn:
        conn.execute(update(launch_contexts).values(expires_at=time.time() - 1))
    expired = authorize(live)
    assert expired["error"] == ["invalid_request"] and "expired" in expired["error_description"][0]
    # opened by one practitioner, signed in as another: refused, and no code
    smart.app.state.auth.accounts.add_user("drno", PASSWORD, "doctor")
    other = _open_launch(smart, people["bob"], drwho).json()["launch"]
    page = smart.client.get(
        "/auth/authorize", params=_authorize_params("launch patient/*.rs", verifier, launch=other)
    )
    form = {**_hidden_fields(page.text), "username": "drno", "password": PASSWORD}
    r = smart.client.post("/auth/authorize", data=form, follow_redirects=False)
    denied = parse_qs(urlsplit(r.headers["location"]).query)
    assert r.status_code == 303 and denied["error"] == ["invalid_request"] and "code" not in denied
    assert "another user" in denied["error_description"][0]
    # only a practitioner opens a launch, for a registered app and an existing patient
    assert _open_launch(smart, people["alice"], alice).status_code == 403
    assert (
        smart.client.post(
            "/auth/launch", json={"patient": people["bob"], "client_id": "nobody"}, headers=drwho
        ).status_code
        == 400
    )
    assert _open_launch(smart, "no-such-patient", drwho).status_code == 404
    assert smart.client.post("/auth/launch", json={"patient": people["bob"]}).status_code == 401


def test_authorize_refusals(smart: Node, people: dict[str, str]) -> None:
    verifier = secrets.token_urlsafe(48)
    good = _authorize_params("patient/*.rs launch/patient", verifier)
    # unknown app or unregistered redirect URI: shown on the page, never redirected
    for bad in ({"client_id": "nobody"}, {"redirect_uri": "https://evil.example/cb"}):
        r = smart.client.get("/auth/authorize", params={**good, **bad}, follow_redirects=False)
        assert r.status_code == 400 and "location" not in r.headers
    # after the redirect URI is known good: back to the app with error and state
    for bad, error in (
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge": "short"}, "invalid_request"),
        ({"aud": "https://other.example/fhir"}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"launch": "xyz", "scope": "launch patient/*.rs"}, "invalid_request"),  # unknown launch
    ):
        r = smart.client.get("/auth/authorize", params={**good, **bad}, follow_redirects=False)
        assert r.status_code == 303, (bad, r.text)
        query = parse_qs(urlsplit(r.headers["location"]).query)
        assert query["error"] == [error] and query["state"] == [good["state"]], bad
    # wrong password: the form again with 401, no code
    page = smart.client.get("/auth/authorize", params=good)
    form = {**_hidden_fields(page.text), "username": "alice", "password": "wrong-password"}
    r = smart.client.post("/auth/authorize", data=form, follow_redirects=False)
    assert r.status_code == 401 and "Invalid username or password" in r.text
    # a patient asking for user/ scopes only gets nothing: invalid_scope back to the app
    r = smart.client.post(
        "/auth/authorize",
        data={
            **_hidden_fields(
                smart.client.get("/auth/authorize", params={**good, "scope": "user/*.rs"}).text
            ),
            "username": "alice",
            "password": PASSWORD,
        },
        follow_redirects=False,
    )
    assert r.status_code == 303 and "error=invalid_scope" in r.headers["location"]


def test_confidential_app_and_token_endpoint_errors(smart: Node, people: dict[str, str]) -> None:
    verifier = secrets.token_urlsafe(48)
    params = {
        **_authorize_params("launch/patient patient/*.rs", verifier),
        "client_id": "server-app",
    }
    code = _sign_in(smart, params, "alice")["code"]
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "code_verifier": verifier,
    }
    bad = smart.client.post("/auth/token", data=form, auth=("server-app", "not-the-secret"))
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"
    ok = smart.client.post("/auth/token", data=form, auth=("server-app", people["secret"]))
    assert ok.status_code == 200, ok.text
    # errors are OAuth 2.0 JSON, never OperationOutcomes
    for data, error in (
        ({"grant_type": "implicit"}, "unsupported_grant_type"),
        ({"grant_type": "password", "username": "alice", "password": "x"}, "invalid_grant"),
        ({"grant_type": "client_credentials"}, "invalid_request"),
        (
            {
                "grant_type": "authorization_code",
                "client_id": "growth-chart",
                "code": "nope",
                "code_verifier": verifier,
            },
            "invalid_grant",
        ),
    ):
        r = smart.client.post("/auth/token", data=data)
        assert r.status_code in (400, 401) and r.json()["error"] == error, (data, r.text)
    r = smart.client.post("/auth/token", json={"grant_type": "password"})
    assert r.json()["error"] == "invalid_request"


def _assertion(key: Any, alg: str, client_id: str, kid: str, *, iat: bool = True) -> str:
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": f"{BASE}/auth/token",
        "exp": now + 240,
        "jti": uuid.uuid4().hex,
    }
    if iat:
        claims["iat"] = now
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


def _client_credentials(smart: Node, assertion: str, scope: str = "system/Observation.rs") -> Any:
    return smart.client.post(
        "/auth/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
            "scope": scope,
        },
    )


def _pem(key: Any) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def test_backend_services_rs384_without_iat_and_replay(smart: Node, people: dict[str, str]) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    smart.app.state.auth.accounts.add_client("bulk-rsa", _pem(key), "system/Observation.rs")
    assertion = _assertion(key, "RS384", "bulk-rsa", "k1", iat=False)  # iat is optional
    r = _client_credentials(smart, assertion)
    assert r.status_code == 200, r.text
    bundle = smart.client.get("/fhir/Observation", headers=_bearer(r.json())).json()
    assert bundle["total"] >= 2
    replay = _client_credentials(smart, assertion)
    assert replay.status_code == 401 and replay.json()["error"] == "invalid_client"
    assert "replayed" in replay.json()["error_description"]
    # an RSA key never verifies another algorithm; a small RSA key cannot be registered
    rs256 = _client_credentials(smart, _assertion(key, "RS256", "bulk-rsa", "k1"))
    assert rs256.json()["error"] == "invalid_client"
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(Exception, match="2048"):
        smart.app.state.auth.accounts.add_client("tiny", _pem(small), "system/*.rs")


class _JwksHandler(BaseHTTPRequestHandler):
    document = b"{}"

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.document)))
        self.end_headers()
        self.wfile.write(self.document)

    def log_message(self, *_args: Any) -> None:
        pass


def test_backend_services_es384_by_jwks_url(smart: Node, people: dict[str, str]) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "es384-1", "alg": "ES384", "use": "sig"})
    _JwksHandler.document = json.dumps({"keys": [jwk]}).encode()
    server = HTTPServer(("127.0.0.1", 0), _JwksHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/jwks.json"
        smart.app.state.auth.accounts.add_client("bulk-ec", None, "system/*.rs", jwks_url=url)
        r = _client_credentials(
            smart, _assertion(key, "ES384", "bulk-ec", "es384-1"), "system/*.rs"
        )
        assert r.status_code == 200, r.text
        unknown_kid = _client_credentials(smart, _assertion(key, "ES384", "bulk-ec", "other"))
        assert unknown_kid.json()["error"] == "invalid_client"
    finally:
        server.shutdown()
        server.server_close()


def test_cors_for_configured_origins_only(smart: Node) -> None:
    preflight = {
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    }
    ok = smart.client.options(
        "/fhir/Patient", headers={"Origin": "https://app.example.org", **preflight}
    )
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "https://app.example.org"
    other = smart.client.options(
        "/fhir/Patient", headers={"Origin": "https://evil.example", **preflight}
    )
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    r = smart.client.get("/fhir/metadata", headers={"Origin": "https://app.example.org"})
    assert r.headers["access-control-allow-origin"] == "https://app.example.org"
    assert "ETag" in r.headers["access-control-expose-headers"]
