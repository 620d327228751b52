"""Helpers for the consent registry tests (fixtures re-exported by conftest.py): a regional
PKI, a registry app on SQLite or PostgreSQL, and helpers to enrol patients and build consents."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from consent.app import create_app
from consent.client import ConsentClient
from consent.fhir import to_fhir
from consent.policy import ConsentRecord, Provision
from consent.settings import RegistrySettings
from trust.pki import OrgCredentials, init_ca, issue_org

ORGS = ("hosp-a", "clinic-b", "clinic-c", "authority", "coordinator")
BASE = "http://testserver"


@dataclass
class Pki:
    ca_dir: Path
    orgs: dict[str, OrgCredentials]


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca_dir = tmp_path_factory.mktemp("ca")
    init_ca(ca_dir)
    return Pki(ca_dir, {org: issue_org(ca_dir, org) for org in ORGS})


@dataclass
class Registry:
    http: TestClient
    pki: Pki
    data_dir: Path

    def org(self, org_id: str) -> ConsentClient:
        return ConsentClient(BASE, self.pki.orgs[org_id], transport=self.http._transport)

    def enrol(self, pseudonym: str, password: str = "correct horse battery") -> dict[str, str]:
        code = self.org("hosp-a").create_enrolment_code(pseudonym)["code"]
        r = self.http.post("/enrol", json={"code": code, "password": password})
        assert r.status_code == 201, r.text
        return {"username": r.json()["username"], "password": password}

    def patient_headers(self, pseudonym: str) -> dict[str, str]:
        creds = self.enrol(pseudonym)
        r = self.http.post("/auth/patient-token", data=creds)
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    def grant(self, headers: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        r = self.http.post("/fhir/Consent", json=body, headers=headers)
        assert r.status_code == 201, r.text
        return r.json()  # type: ignore[no-any-return]


@pytest.fixture
def registry(db_url: str, pki: Pki, tmp_path: Path) -> Iterator[Registry]:
    settings = RegistrySettings(
        data_dir=tmp_path / "consent", db_url=db_url, ca_dir=pki.ca_dir, public_url=BASE
    )
    app = create_app(settings)
    with TestClient(app) as http:
        yield Registry(http, pki, settings.data_dir)
    app.state.engine.dispose()


def treat_consent(
    patient: str,
    recipient: str = "clinic-b",
    classes: tuple[str, ...] = ("Condition", "Observation"),
    purpose: str = "TREAT",
    denies: tuple[str, ...] = (),
) -> dict[str, Any]:
    nested = [
        Provision(
            "permit",
            actors=frozenset({recipient}),
            purposes=frozenset({purpose}),
            classes=frozenset(classes),
        )
    ]
    if denies:
        nested.append(Provision("deny", classes=frozenset(denies)))
    body = to_fhir(
        ConsentRecord("x", patient, "active", Provision("deny", provisions=tuple(nested)))
    )
    del body["id"]
    return body
