"""A small region for the patient-side tests: a real consent registry process (HTTP) and a node
app (TestClient) that trusts the registry's pinned patient-token key, with two enrolled
patients who sign in once through the registry's OpenID Connect flow (PKCE)."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from argon2 import PasswordHasher
from fastapi.testclient import TestClient

from deploy.launcher import start_service
from node.app import create_app
from node.identity import NATIONAL_ID_SYSTEM
from node.settings import load_settings
from trust.pki import init_ca, issue_org
from trust.tokens import jwk_thumbprint, load_or_create_signing_key

PASSWORD = "correct horse battery"
PATIENT_PASSWORD = "my own long password"
CLIENT_ID = "ipjms-patient-app"
REDIRECT = "http://127.0.0.1:8765/callback"
FHIR = "application/fhir+json"
TOKEN_REFRESH_SECONDS = 200  # the registry's patient tokens live 300 s
DOCTOR_REFRESH_SECONDS = 200  # re-issued well inside the node token's lifetime (token_ttl)
FREE_FAILURES = 3  # failed logins before the registry locks an account (default 5)
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@dataclass
class Person:
    patient_id: str
    username: str
    pseudonym: str
    registry: str = ""
    id_token: str = ""
    access_token: str = ""
    signed_at: float = 0.0

    def sign_in(self) -> None:
        tokens = sign_in(self.registry, self.username)
        self.access_token, self.id_token = tokens["access_token"], tokens["id_token"]
        self.signed_at = time.monotonic()

    @property
    def headers(self) -> dict[str, str]:
        """The registry's access token, signed in again before it expires (it lives 300 s and
        the region is shared by every module of a session)."""
        if time.monotonic() - self.signed_at > TOKEN_REFRESH_SECONDS:
            self.sign_in()
        return {"Authorization": f"Bearer {self.access_token}"}


@dataclass
class Region:
    registry: str  # base URL of the registry process
    node: TestClient
    app: Any
    a: Person
    b: Person
    _doctor: dict[str, str]
    _doctor_at: float = 0.0

    @property
    def doctor(self) -> dict[str, str]:
        """The doctor's node token, signed in again before it expires: the region is shared by
        every module of a session, which on a loaded machine outlives the token."""
        if time.monotonic() - self._doctor_at > DOCTOR_REFRESH_SECONDS:
            self._doctor = doctor_headers(self.node)
            self._doctor_at = time.monotonic()
        return self._doctor

    @property
    def store(self) -> Any:
        return self.app.state.store

    def post(self, path: str, body: Any, headers: dict[str, str]) -> httpx.Response:
        return self.node.post(path, json=body, headers={"Content-Type": FHIR, **headers})


def doctor_headers(node: TestClient) -> dict[str, str]:
    """A fresh node token for the region's doctor (password grant)."""
    r = node.post(
        "/auth/token",
        data={"grant_type": "password", "username": "doctor1", "password": PASSWORD},
    )
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorize_params(challenge: str, **extra: str) -> dict[str, str]:
    return {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT,
        "scope": "openid patient/*.rs patient/Observation.cu patient/QuestionnaireResponse.cu "
        "patient/Device.cu patient/Appointment.cu patient/MedicationAdministration.cu "
        "patient/Consent.cruds patient/Disclosure.rs",
        "state": "st-1",
        "nonce": "n-1",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **extra,
    }


def sign_in(registry: str, username: str, password: str = PATIENT_PASSWORD) -> dict[str, Any]:
    """The whole authorization-code flow with PKCE, as a patient app does it."""
    verifier, challenge = pkce_pair()
    params = authorize_params(challenge)
    page = httpx.get(f"{registry}/oidc/authorize", params=params, timeout=120)
    assert page.status_code == 200 and "<form" in page.text, page.text
    r = httpx.post(
        f"{registry}/oidc/authorize",
        data={**params, "username": username, "password": password},
        timeout=120,
    )
    assert r.status_code == 303, r.text
    location = urlsplit(r.headers["location"])
    query = parse_qs(location.query)
    assert query["state"] == ["st-1"]
    r = httpx.post(
        f"{registry}/oidc/token",
        data={
            "grant_type": "authorization_code",
            "code": query["code"][0],
            "redirect_uri": REDIRECT,
            "client_id": CLIENT_ID,
            "code_verifier": verifier,
        },
        timeout=120,
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def start_region(root: Path, *, care: bool = False) -> Iterator[Region]:
    init_ca(root / "ca")
    creds_dir = root / "orgs" / "org-test"
    issue_org(root / "ca", "org-test", out_dir=creds_dir)
    registry = start_service(
        "consent",
        ["consent", "serve", "--data-dir", str(root / "consent"), "--port", "0",
         "--ca-dir", str(root / "ca")],
        base_url="http://127.0.0.1:{http}",
        log_dir=root / "logs",
        ports_dir=root / "consent",
        env={
            "IPJMS_CONSENT_LOGIN_FREE_FAILURES": str(FREE_FAILURES),
            "IPJMS_CONSENT_PASSWORD_HASH": "owasp-minimum",  # as the demo's region
        },
    )  # fmt: skip
    try:
        key = load_or_create_signing_key(root / "consent" / "keys" / "access-token.pem")
        settings = load_settings(
            root / "node",
            org_id="org-test",
            consent_url=registry.base_url,
            org_credentials_dir=creds_dir,
            care_enabled=care,
            care_tick_seconds=3600.0,
        )
        settings = settings.model_copy(
            update={
                "consent": settings.consent.model_copy(
                    update={"patient_key_pins": (jwk_thumbprint(key.public_jwk()),)}
                )
            }
        )
        app = create_app(settings)
        accounts = app.state.auth.accounts
        accounts.hasher = FAST_HASHER
        accounts.add_user("doctor1", PASSWORD, "doctor")
        with TestClient(app) as node:
            doctor, doctor_at = doctor_headers(node), time.monotonic()
            people = []
            for nid, family in (("NID-A-0001", "Alpha"), ("NID-B-0002", "Bravo")):
                patient = app.state.store.create(
                    {
                        "resourceType": "Patient",
                        "identifier": [{"system": NATIONAL_ID_SYSTEM, "value": nid}],
                        "name": [{"family": family}],
                    },
                    writer="test",
                ).resource
                r = node.post(
                    "/consent/enrolment-code", json={"patient": patient["id"]}, headers=doctor
                )
                assert r.status_code == 201, r.text
                code = r.json()
                enrolled = httpx.post(
                    f"{registry.base_url}/enrol",
                    json={"code": code["code"], "password": PATIENT_PASSWORD},
                    timeout=120,
                )
                assert enrolled.status_code == 201, enrolled.text
                person = Person(
                    patient["id"], enrolled.json()["username"], code["pseudonym"], registry.base_url
                )
                person.sign_in()
                people.append(person)
            yield Region(registry.base_url, node, app, people[0], people[1], doctor, doctor_at)
    finally:
        registry.stop()
