"""node/consent_link.py: a doctor at a node gets a patient's one-time enrolment code from a real
registry process; the patient enrols with it. Nurses cannot; unlinkable patients are refused."""

from __future__ import annotations

from pathlib import Path

import httpx
from argon2 import PasswordHasher
from consent_harness import Pki
from fastapi.testclient import TestClient

from deploy.launcher import start_service
from node.app import create_app
from node.identity import NATIONAL_ID_SYSTEM, patient_pseudonym
from node.settings import load_settings
from trust.pseudonym import load_or_create_linkage_key
from trust.pseudonymiser import LinkageKeyPseudonymiser

PASSWORD = "correct horse battery"


def test_doctor_issues_enrolment_code_through_the_registry(pki: Pki, tmp_path: Path) -> None:
    registry = start_service(
        "consent",
        ["consent", "serve", "--data-dir", str(tmp_path / "consent"), "--port", "0",
         "--ca-dir", str(pki.ca_dir)],
        base_url="http://127.0.0.1:{http}",
        log_dir=tmp_path / "logs",
        ports_dir=tmp_path / "consent",
    )  # fmt: skip
    base = registry.base_url
    try:
        settings = load_settings(
            tmp_path / "node",
            org_id="hosp-a",
            consent_url=base,
            org_credentials_dir=pki.ca_dir / "orgs" / "hosp-a",
        )
        app = create_app(settings)
        app.state.auth.accounts.hasher = PasswordHasher(
            time_cost=1, memory_cost=1024, parallelism=1
        )
        for user, role in (("doc", "doctor"), ("nurse", "nurse")):
            app.state.auth.accounts.add_user(user, PASSWORD, role)
        with TestClient(app) as node:
            store = app.state.store
            linked = store.create(
                {
                    "resourceType": "Patient",
                    "identifier": [{"system": NATIONAL_ID_SYSTEM, "value": "NID-123-456"}],
                }
            ).resource
            unlinked = store.create({"resourceType": "Patient"}).resource

            def login(user: str) -> dict[str, str]:
                r = node.post(
                    "/auth/token",
                    data={"grant_type": "password", "username": user, "password": PASSWORD},
                )
                assert r.status_code == 200, r.text
                return {"Authorization": f"Bearer {r.json()['access_token']}"}

            doc, nurse = login("doc"), login("nurse")
            r = node.post("/consent/enrolment-code", json={"patient": linked["id"]}, headers=doc)
            assert r.status_code == 201, r.text
            body = r.json()
            key = load_or_create_linkage_key(settings.linkage_key_file)
            assert body["pseudonym"] == patient_pseudonym(linked, LinkageKeyPseudonymiser(key))

            enrolled = httpx.post(
                f"{base}/enrol", json={"code": body["code"], "password": "patient's password"}
            )
            assert enrolled.status_code == 201 and enrolled.json()["patient"] == body["pseudonym"]

            assert (
                node.post(
                    "/consent/enrolment-code", json={"patient": linked["id"]}, headers=nurse
                ).status_code
                == 403
            )
            assert (
                node.post(
                    "/consent/enrolment-code", json={"patient": unlinked["id"]}, headers=doc
                ).status_code
                == 422
            )
            assert (
                node.post(
                    "/consent/enrolment-code", json={"patient": "nope"}, headers=doc
                ).status_code
                == 404
            )
            assert (
                node.post("/consent/enrolment-code", json={"patient": linked["id"]}).status_code
                == 401
            )
        app.state.engine.dispose()
    finally:
        registry.stop()
