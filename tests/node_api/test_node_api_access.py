"""Issue 2 must-show 5 over HTTP: a patient's token cannot reach another patient's data, a token
without the scope is refused, expired/tampered/foreign tokens are refused — on both databases."""

from __future__ import annotations

import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from node_api.node_harness import PASSWORD, Node, outcome_text
from trust.tokens import SigningKey


def _patient(mrn: str) -> dict:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:test:mrn", "value": mrn}],
        "name": [{"family": mrn}],
    }


def _obs(pid: str) -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": "2024-01-01T00:00:00+00:00",
        "valueQuantity": {"value": 70, "unit": "/min"},
    }


@pytest.fixture
def two_patients(node: Node) -> dict[str, str]:
    doc = node.login("doctor1")
    ids: dict[str, str] = {}
    for who in ("alice", "bob"):
        pid = node.post("/fhir/Patient", _patient(who), doc).json()["id"]
        ids[who] = pid
        ids[f"{who}_obs"] = node.post("/fhir/Observation", _obs(pid), doc).json()["id"]
    node.app.state.auth.accounts.add_user("alice", PASSWORD, "patient", patient_id=ids["alice"])
    return ids


def test_patient_token_reaches_only_own_compartment(node: Node, two_patients: dict) -> None:
    ids = two_patients
    alice = node.login("alice")
    assert node.client.get(f"/fhir/Patient/{ids['alice']}", headers=alice).status_code == 200
    assert (
        node.client.get(f"/fhir/Observation/{ids['alice_obs']}", headers=alice).status_code == 200
    )
    for path in (
        f"/fhir/Patient/{ids['bob']}",
        f"/fhir/Observation/{ids['bob_obs']}",
        f"/fhir/Observation/{ids['bob_obs']}/_history",
        f"/fhir/Observation/{ids['bob_obs']}/_history/1",
        f"/fhir/Patient/{ids['bob']}/$everything",
    ):
        r = node.client.get(path, headers=alice)
        assert r.status_code in (403, 404), (path, r.status_code)
        assert outcome_text(r)
    # Searches are restricted to the compartment; a query naming another patient is refused.
    bundle = node.client.get("/fhir/Observation", headers=alice).json()
    assert {e["resource"]["id"] for e in bundle["entry"]} == {ids["alice_obs"]}
    for query in (f"?patient={ids['bob']}", f"?subject=Patient/{ids['bob']}"):
        r = node.client.get(f"/fhir/Observation{query}", headers=alice)
        assert r.status_code == 403 and outcome_text(r), query
    patients = node.client.get("/fhir/Patient", headers=alice).json()
    assert [e["resource"]["id"] for e in patients["entry"]] == [ids["alice"]]
    everything = node.client.get(f"/fhir/Patient/{ids['alice']}/$everything", headers=alice).json()
    assert {e["resource"]["id"] for e in everything["entry"]} == {ids["alice"], ids["alice_obs"]}
    # Patient tokens write only their own readings (issue 15; the server names the performer)
    # and cannot post bundles.
    mine = node.post("/fhir/Observation", _obs(ids["alice"]), alice)
    assert mine.status_code == 201 and mine.json()["performer"] == [
        {"reference": f"Patient/{ids['alice']}"}
    ]
    assert node.post("/fhir/Observation", _obs(ids["bob"]), alice).status_code == 403
    assert node.post("/fhir/Condition", {"resourceType": "Condition"}, alice).status_code == 403
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": f"Observation/{ids['bob_obs']}"}}],
    }
    assert node.post("/fhir", bundle, alice).status_code == 403


def test_token_without_scope_is_refused(node: Node, two_patients: dict) -> None:
    before = node.store.counts()
    nurse = node.login("nurse1")
    r = node.post("/fhir/Condition", {"resourceType": "Condition"}, nurse)
    assert r.status_code == 403 and "create" in outcome_text(r)
    assert node.post("/fhir/Observation", _obs(two_patients["alice"]), nurse).status_code == 201
    admin = node.login("admin1")
    r = node.client.delete(f"/fhir/Patient/{two_patients['bob']}", headers=admin)
    assert r.status_code == 403
    narrow = node.login("doctor1", scope="user/Observation.rs")
    r = node.client.get(f"/fhir/Patient/{two_patients['bob']}", headers=narrow)
    assert r.status_code == 403
    txn = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": _patient("carol"), "request": {"method": "POST", "url": "Patient"}}],
    }
    r = node.post("/fhir", txn, nurse)
    assert r.status_code == 403 and "entry[0]" in outcome_text(r)
    assert node.store.counts()["Patient"] == before["Patient"]


def _forge(node: Node, key: SigningKey | None = None, **overrides: object) -> str:
    auth = node.app.state.auth
    now = int(time.time())
    claims = {
        "iss": auth.settings.token_issuer,
        "aud": auth.settings.token_audience,
        "sub": "doctor1",
        "role": "doctor",
        "scope": "user/*.cruds",
        "iat": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
        **overrides,
    }
    signer = key or auth.key
    return jwt.encode(claims, signer.private_key, algorithm="ES256", headers={"kid": auth.key.kid})


def test_missing_expired_tampered_and_foreign_tokens_get_401(
    node: Node, two_patients: dict
) -> None:
    path = f"/fhir/Patient/{two_patients['alice']}"
    assert (
        node.client.get(path, headers={"Authorization": f"Bearer {_forge(node)}"}).status_code
        == 200
    )
    valid = node.login("nurse1")["Authorization"].split()[1]
    head, body, sig = valid.split(".")
    payload = jwt.utils.base64url_decode(body).replace(b'"nurse"', b'"doctor"')
    tampered = ".".join([head, jwt.utils.base64url_encode(payload).decode(), sig])
    now = int(time.time())
    cases = {
        "missing": {},
        "not bearer": {"Authorization": f"Basic {valid}"},
        "tampered": {"Authorization": f"Bearer {tampered}"},
        "expired": {"Authorization": f"Bearer {_forge(node, iat=now - 900, exp=now - 60)}"},
        "wrong audience": {"Authorization": f"Bearer {_forge(node, aud='urn:ipjms:node:x:fhir')}"},
        "foreign key": {"Authorization": f"Bearer {_forge(node, key=SigningKey.generate())}"},
        "alg none": {
            "Authorization": "Bearer " + jwt.encode({"sub": "doctor1"}, None, algorithm="none")  # type: ignore[arg-type]
        },
    }
    for what, headers in cases.items():
        r = node.client.get(path, headers=headers)
        assert r.status_code == 401, what
        assert r.headers.get("WWW-Authenticate") == "Bearer"
        assert outcome_text(r), what


def test_backend_client_credentials_over_http(node: Node, two_patients: dict) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    node.app.state.auth.accounts.add_client("supernode", pem.decode(), "system/Observation.rs")

    def assertion() -> str:
        now = int(time.time())
        claims = {
            "iss": "supernode",
            "sub": "supernode",
            "aud": "http://testserver/auth/token",
            "iat": now,
            "exp": now + 60,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, key, algorithm="ES256", headers={"kid": "sn"})

    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion(),
        "scope": "system/Observation.rs",
    }
    r = node.client.post("/auth/token", data=form)
    assert r.status_code == 200, r.text
    grant = r.json()
    assert grant["expires_in"] <= 300 and grant["scope"] == "system/Observation.rs"
    headers = {"Authorization": f"Bearer {grant['access_token']}"}
    bundle = node.client.get("/fhir/Observation", headers=headers).json()
    assert bundle["total"] == 2
    assert node.client.get("/fhir/Patient", headers=headers).status_code == 403
    replay = node.client.post("/auth/token", data=form)
    # OAuth 2.0 error JSON (RFC 6749 §5.2), not an OperationOutcome
    assert replay.status_code == 401 and replay.json()["error"] == "invalid_client"
    assert "replayed" in replay.json()["error_description"]


def test_admin_creates_accounts_others_cannot(node: Node, two_patients: dict) -> None:
    account = {"username": "bob", "password": PASSWORD, "role": "patient",
               "patient": two_patients["bob"]}  # fmt: skip
    doctor = node.login("doctor1")
    r = node.client.post("/auth/accounts", json=account, headers=doctor)
    assert r.status_code == 403 and "accounts.manage" in outcome_text(r)
    admin = node.login("admin1")
    r = node.client.post("/auth/accounts", json={**account, "role": "surgeon"}, headers=admin)
    assert r.status_code == 400 and "unknown role" in outcome_text(r)
    r = node.client.post("/auth/accounts", json=account, headers=admin)
    assert r.status_code == 201, r.text
    bob = node.login("bob")
    assert node.client.get(f"/fhir/Patient/{two_patients['bob']}", headers=bob).status_code == 200
    assert node.client.get(f"/fhir/Patient/{two_patients['alice']}", headers=bob).status_code == 404
    assert node.client.post("/auth/accounts", json=account).status_code == 401
