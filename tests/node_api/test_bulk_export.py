"""Bulk Data ``$export`` (issue 17, must-show 3): the async NDJSON pattern at system and patient
level; a patient-scoped token exports only its own compartment, a backend client only the types
its scopes allow (exactly what its searches return); the job survives a node restart (re-run)
or is reported failed; bad kick-offs are refused."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient

from node.api.bulk_export import MAX_ATTEMPTS, ExportJob, ExportJobs
from node.app import create_app
from node.settings import load_settings
from node_api.node_harness import FAST_HASHER, PASSWORD, Node, make_node, outcome_text

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


@pytest.fixture(scope="module")
def bulk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    yield from make_node(None, tmp_path_factory.mktemp("bulk") / "node")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def people(bulk: Node) -> dict[str, str]:
    doc = bulk.login("doctor1")
    ids = {}
    org = bulk.post("/fhir/Organization", {"resourceType": "Organization", "name": "H"}, doc)
    ids["org"] = org.json()["id"]
    for name in ("Ann", "Ben", "Cid"):
        p = bulk.post("/fhir/Patient", {"resourceType": "Patient", "name": [{"family": name}]}, doc)
        ids[name] = p.json()["id"]
        for n in range(3):
            obs = {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": f"Patient/{ids[name]}"},
                "valueQuantity": {
                    "value": 60 + n,
                    "unit": "/min",
                    "system": "http://unitsofmeasure.org",
                    "code": "/min",
                },
            }
            assert bulk.post("/fhir/Observation", obs, doc).status_code == 201
    bulk.app.state.auth.accounts.add_user("ann", PASSWORD, "patient", patient_id=ids["Ann"])
    return ids


def _export(node: Node, path: str, headers: dict[str, str]) -> dict[str, Any]:
    """Kick off, poll the status URL, return the manifest."""
    r = node.client.get(path, headers={**headers, **ASYNC})
    assert r.status_code == 202, r.text
    status = r.headers["Content-Location"].removeprefix("http://testserver")
    deadline = time.monotonic() + 60
    while True:
        s = node.client.get(status, headers=headers)
        if s.status_code == 200:
            return dict(s.json())
        assert s.status_code == 202 and s.headers["X-Progress"], s.text
        assert time.monotonic() < deadline, "export did not finish"
        time.sleep(0.1)


def _files(node: Node, manifest: dict[str, Any], headers: dict[str, str]) -> dict[str, list]:
    out = {}
    for item in manifest["output"]:
        r = node.client.get(item["url"].removeprefix("http://testserver"), headers=headers)
        assert r.status_code == 200 and r.headers["content-type"].startswith(
            "application/fhir+ndjson"
        )
        lines = [json.loads(line) for line in r.text.splitlines()]
        assert len(lines) == item["count"]
        out[item["type"]] = lines
    return out


def test_system_export_by_a_doctor(bulk: Node, people: dict[str, str]) -> None:
    doc = bulk.login("doctor1")
    manifest = _export(bulk, "/fhir/$export", doc)
    assert manifest["requiresAccessToken"] is True and manifest["transactionTime"]
    files = _files(bulk, manifest, doc)
    assert len(files["Patient"]) == 3 and len(files["Observation"]) == 9
    assert [o["id"] for o in files["Organization"]] == [people["org"]]
    # each type's file holds exactly what that token's search returns
    for rtype, lines in files.items():
        total = bulk.client.get(f"/fhir/{rtype}?_summary=count", headers=doc).json()["total"]
        assert total == len(lines), rtype
    # another caller cannot see the job or its files
    nurse = bulk.login("nurse1")
    status = manifest["output"][0]["url"].removeprefix("http://testserver")
    assert bulk.client.get(status, headers=nurse).status_code == 404


def test_patient_token_exports_only_its_compartment(bulk: Node, people: dict[str, str]) -> None:
    ann = bulk.login("ann")
    files = _files(bulk, _export(bulk, "/fhir/Patient/$export", ann), ann)
    assert [p["id"] for p in files["Patient"]] == [people["Ann"]]
    assert {o["subject"]["reference"] for o in files["Observation"]} == {f"Patient/{people['Ann']}"}
    assert len(files["Observation"]) == 3 and "Organization" not in files
    same = _files(bulk, _export(bulk, "/fhir/$export", ann), ann)  # system level: the same limit
    assert {p["id"] for p in same["Patient"]} == {people["Ann"]}


def test_backend_client_exports_only_its_scopes(bulk: Node, people: dict[str, str]) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    bulk.app.state.auth.accounts.add_client("exporter", pem, "system/Observation.rs")
    now = int(time.time())
    assertion = jwt.encode(
        {
            "iss": "exporter",
            "sub": "exporter",
            "aud": "http://testserver/auth/token",
            "exp": now + 120,
            "jti": uuid.uuid4().hex,
        },
        key,
        algorithm="ES384",
        headers={"kid": "e1"},
    )
    token = bulk.client.post(
        "/auth/token",
        data={
            "grant_type": "client_credentials",
            "scope": "system/Observation.rs",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        },
    ).json()["access_token"]
    system = {"Authorization": f"Bearer {token}"}
    manifest = _export(bulk, "/fhir/$export", system)
    assert [o["type"] for o in manifest["output"]] == ["Observation"]
    assert manifest["output"][0]["count"] == 9
    refused = bulk.client.get("/fhir/$export?_type=Patient", headers={**system, **ASYNC})
    assert refused.status_code == 403


def _group(node: Node, headers: dict[str, str], *members: str) -> str:
    body = {
        "resourceType": "Group",
        "type": "person",
        "actual": True,
        "member": [{"entity": {"reference": f"Patient/{m}"}} for m in members],
    }
    r = node.post("/fhir/Group", body, headers)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_group_export_returns_only_the_members_data(bulk: Node, people: dict[str, str]) -> None:
    doc = bulk.login("doctor1")
    members = [people["Ben"], people["Cid"]]
    gid = _group(bulk, doc, *members)
    files = _files(bulk, _export(bulk, f"/fhir/Group/{gid}/$export", doc), doc)
    assert sorted(p["id"] for p in files["Patient"]) == sorted(members)
    subjects = ",".join(f"Patient/{m}" for m in members)
    expected = bulk.client.get(
        f"/fhir/Observation?subject={subjects}&_count=100", headers=doc
    ).json()
    assert expected["total"] == 6  # three readings each; Ann's three are not members' data
    assert sorted(o["id"] for o in files["Observation"]) == sorted(
        e["resource"]["id"] for e in expected["entry"]
    )
    # a Group lies in each member's compartment: exported once, as a search finds them
    groups = bulk.client.get(f"/fhir/Group?member={subjects}&_count=100", headers=doc).json()
    assert gid in {g["id"] for g in files["Group"]}
    assert sorted(g["id"] for g in files["Group"]) == sorted(
        e["resource"]["id"] for e in groups["entry"]
    )
    assert "Organization" not in files  # shared types are in no compartment
    typed = _export(bulk, f"/fhir/Group/{gid}/$export?_type=Patient", doc)
    assert [(o["type"], o["count"]) for o in typed["output"]] == [("Patient", 2)]


def test_patient_token_cannot_export_a_group_of_others(bulk: Node, people: dict[str, str]) -> None:
    doc, ann = bulk.login("doctor1"), bulk.login("ann")
    mixed = _group(bulk, doc, people["Ann"], people["Ben"])
    r = bulk.client.get(f"/fhir/Group/{mixed}/$export", headers={**ann, **ASYNC})
    assert r.status_code == 403 and "other patients" in outcome_text(r)
    others = _group(bulk, doc, people["Ben"])  # not in Ann's compartment: existence not revealed
    r = bulk.client.get(f"/fhir/Group/{others}/$export", headers={**ann, **ASYNC})
    assert r.status_code == 404
    own = _group(bulk, doc, people["Ann"])
    files = _files(bulk, _export(bulk, f"/fhir/Group/{own}/$export", ann), ann)
    assert [p["id"] for p in files["Patient"]] == [people["Ann"]] and len(files["Observation"]) == 3


def test_bad_kickoffs_are_refused(bulk: Node) -> None:
    doc = bulk.login("doctor1")
    for path, headers, status, named in (
        ("/fhir/$export", {}, 400, "respond-async"),
        ("/fhir/$export?_outputFormat=text/csv", ASYNC, 400, "text/csv"),
        ("/fhir/$export?_typeFilter=Patient%3Factive%3Dtrue", ASYNC, 400, "_typeFilter"),
        ("/fhir/$export?_type=Spaceship", ASYNC, 400, "Spaceship"),
        ("/fhir/Patient/$export?_type=Organization", ASYNC, 400, "Organization"),
        ("/fhir/$export?_since=yesterday", ASYNC, 400, "yesterday"),
        ("/fhir/Group/g1/$export", ASYNC, 404, "Group/g1"),
        ("/fhir/$export-status/0123abcd", {}, 404, "0123abcd"),
    ):
        r = bulk.client.get(path, headers={**doc, **headers})
        assert r.status_code == status and named in outcome_text(r), (path, r.text)


def test_export_job_survives_a_restart_or_is_reported_failed(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    settings = load_settings(data_dir, org_id="org-restart")

    def serve() -> TestClient:
        app = create_app(settings)
        app.state.auth.accounts.hasher = FAST_HASHER
        return TestClient(app)

    with serve() as client:  # first run: an account and some data
        client.app.state.auth.accounts.add_user("doc", PASSWORD, "doctor")  # type: ignore[attr-defined]
        token = client.post(
            "/auth/token", data={"grant_type": "password", "username": "doc", "password": PASSWORD}
        ).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
        client.post(
            "/fhir/Patient", content=json.dumps({"resourceType": "Patient"}), headers=headers
        )
    # the node stopped while a job was being written (in-progress), and one that was
    # interrupted too often already
    jobs = ExportJobs(data_dir / "exports")
    interrupted = ExportJob.new(
        "doctor:doc", "system", "http://testserver/fhir/$export", {"Patient": None}, None
    )
    interrupted.status, interrupted.attempts = "in-progress", 1
    jobs.save(interrupted)
    hopeless = ExportJob.new("doctor:doc", "system", "x", {"Patient": None}, None)
    hopeless.status, hopeless.attempts = "in-progress", MAX_ATTEMPTS
    jobs.save(hopeless)
    with serve() as client:  # restarted: the interrupted job runs again and completes
        auth = {"Authorization": f"Bearer {token}"}
        deadline = time.monotonic() + 60
        while (
            r := client.get(f"/fhir/$export-status/{interrupted.id}", headers=auth)
        ).status_code == 202:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert r.status_code == 200 and r.json()["output"][0]["count"] == 1
        assert jobs.load(interrupted.id).attempts == 2  # type: ignore[union-attr]
        # the runner takes the jobs one at a time: the hopeless one may still be queued
        while (
            failed := client.get(f"/fhir/$export-status/{hopeless.id}", headers=auth)
        ).status_code == 202:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert failed.status_code == 500 and "interrupted" in outcome_text(failed)
        # cancelling removes a finished job and its files
        assert (
            client.delete(f"/fhir/$export-status/{interrupted.id}", headers=auth).status_code == 202
        )
        assert client.get(f"/fhir/$export-status/{interrupted.id}", headers=auth).status_code == 404
