"""Commit events of the node's HTTP write paths (the real FastAPI app): REST create, update and
delete, transaction and batch Bundles, and the model scorer's RiskAssessments — one event per
committed change, in commit order, naming who wrote it; none for a refused write. SQLite and
PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from federated.cohort import BackendTokenSource
from federated.feature_spec import Sample
from federated.scoring import risk_assessment, store_assessment
from node.store import CommitEvent
from node_api.node_harness import Node
from trust.tokens import load_or_create_signing_key


def patient(n: int) -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [{"family": f"F{n}"}], "gender": "female"}


def observation(subject: str, value: float = 72) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": subject},
        "valueQuantity": {"value": value, "unit": "/min"},
    }


POST_OBSERVATION = {"method": "POST", "url": "Observation"}


class Events:
    """What an in-process subscriber of the app's store received."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.got: list[CommitEvent] = []
        node.store.events.subscribe("test", self.got.extend, new_from="now")

    def take(self) -> list[tuple[str, int, str, str]]:
        """The events since the last take, checked against the durable log (same events, in
        positions that follow each other)."""
        got, self.got[:] = list(self.got), []
        if got:
            log = self.node.store.events.read_since(got[0].position - 1, limit=len(got))
            assert log == got
            assert [e.position for e in got] == list(range(got[0].position, got[-1].position + 1))
        return [(e.reference, e.version_id, e.interaction, e.writer) for e in got]


def test_rest_create_update_delete_one_event_each(node: Node) -> None:
    events = Events(node)
    doc = node.login("doctor1")
    r = node.post("/fhir/Patient", patient(1), doc)
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    body = {**r.json(), "gender": "male"}
    assert node.put(f"/fhir/Patient/{pid}", body, doc).status_code == 200
    assert node.put(f"/fhir/Patient/{pid}", body, doc).status_code == 200  # unchanged: no event
    assert node.client.delete(f"/fhir/Patient/{pid}", headers=doc).status_code == 200
    assert events.take() == [
        (f"Patient/{pid}", 1, "create", "doctor:doctor1"),
        (f"Patient/{pid}", 2, "update", "doctor:doctor1"),
        (f"Patient/{pid}", 3, "delete", "doctor:doctor1"),
    ]


def test_refused_rest_writes_publish_nothing(node: Node) -> None:
    doc = node.login("doctor1")
    pid = node.post("/fhir/Patient", patient(1), doc).json()["id"]
    events = Events(node)
    head = node.store.events.head()
    refused = [
        node.post("/fhir/Patient", {**patient(2), "gender": "sometimes"}, doc),  # 400
        node.post("/fhir/Observation", observation("Patient/missing"), doc),  # 422
        node.client.put(  # 412
            f"/fhir/Patient/{pid}",
            json={**patient(1), "id": pid, "gender": "male"},
            headers={**doc, "If-Match": 'W/"9"', "Content-Type": "application/fhir+json"},
        ),
        node.post("/fhir/Patient", patient(3), node.login("nurse1", "user/Patient.rs")),  # 403
    ]
    assert [r.status_code for r in refused] == [400, 422, 412, 403]
    assert events.take() == [] and node.store.events.head() == head


def test_transaction_is_one_commit_and_a_failed_one_none(node: Node) -> None:
    events = Events(node)
    doc = node.login("doctor1")
    tx = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:p1", "resource": patient(1),
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": observation("urn:uuid:p1"),
             "request": {"method": "POST", "url": "Observation"}},
            {"resource": observation("urn:uuid:p1", 80),
             "request": {"method": "POST", "url": "Observation"}},
        ],
    }  # fmt: skip
    r = node.post("/fhir", tx, doc)
    assert r.status_code == 200, r.text
    ids = [e["response"]["location"].split("/")[1] for e in r.json()["entry"]]
    assert events.take() == [
        (f"Patient/{ids[0]}", 1, "create", "doctor:doctor1"),
        (f"Observation/{ids[1]}", 1, "create", "doctor:doctor1"),
        (f"Observation/{ids[2]}", 1, "create", "doctor:doctor1"),
    ]
    log = node.store.events.read_since(0)
    assert len({e.commit_seq for e in log}) == 1  # one commit
    broken = {**tx, "entry": [*tx["entry"][:2], {"resource": observation("Patient/nope"),
              "request": {"method": "POST", "url": "Observation"}}]}  # fmt: skip
    assert node.post("/fhir", broken, doc).status_code == 422
    assert events.take() == []


def test_batch_commits_each_entry_on_its_own(node: Node) -> None:
    events = Events(node)
    doc = node.login("doctor1")
    pid = node.post("/fhir/Patient", patient(1), doc).json()["id"]
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": observation(f"Patient/{pid}"), "request": POST_OBSERVATION},
            {"resource": observation("Patient/nope"), "request": POST_OBSERVATION},
            {"request": {"method": "GET", "url": f"Patient/{pid}"}},
            {"resource": observation(f"Patient/{pid}", 90), "request": POST_OBSERVATION},
        ],
    }  # fmt: skip
    r = node.post("/fhir", batch, doc)
    assert r.status_code == 200, r.text
    statuses = [e["response"]["status"] for e in r.json()["entry"]]
    assert [s[:3] for s in statuses] == ["201", "422", "200", "201"]
    obs = [r.json()["entry"][i]["response"]["location"].split("/")[1] for i in (0, 3)]
    taken = events.take()
    assert taken == [
        (f"Patient/{pid}", 1, "create", "doctor:doctor1"),
        (f"Observation/{obs[0]}", 1, "create", "doctor:doctor1"),
        (f"Observation/{obs[1]}", 1, "create", "doctor:doctor1"),
    ]
    assert len({e.commit_seq for e in node.store.events.read_since(0)}) == 3  # one per entry


def test_an_unauthorised_bundle_entry_refuses_the_whole_bundle(node: Node) -> None:
    """Authorised on the parsed entries: a nurse who may only read and search Patients cannot slip a
    write in at entry 1; nothing is written, nothing published."""
    events = Events(node)
    nurse = node.login("nurse1", "user/Patient.rs")
    tx = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"request": {"method": "GET", "url": "Patient?gender=female"}},
            {"resource": patient(1), "request": {"method": "POST", "url": "/Patient"}},
        ],
    }
    r = node.post("/fhir", tx, nurse)
    assert r.status_code == 403 and "Bundle.entry[1]" in r.text
    assert events.take() == [] and node.store.counts() == {}


def test_model_scores_are_committed_once_by_the_scoring_client(node: Node, tmp_path: Path) -> None:
    """``ipjms fl score`` stores RiskAssessments through the node's API as a backend client
    (federated.scoring.store_assessment): one event per new score, named after the client;
    scoring the same discharge again adds nothing."""
    doc = node.login("doctor1")
    pid = node.post("/fhir/Patient", patient(1), doc).json()["id"]
    enc = {"resourceType": "Encounter", "status": "finished", "class": {"code": "IMP"},
           "subject": {"reference": f"Patient/{pid}"}}  # fmt: skip
    eid = node.post("/fhir/Encounter", enc, doc).json()["id"]
    key_path = tmp_path / "scorer.pem"
    key = load_or_create_signing_key(key_path)
    scope = "system/*.rs system/RiskAssessment.c"
    node.app.state.auth.accounts.add_client("fl-scorer", key.public_pem().decode(), scope)
    token = BackendTokenSource("http://testserver", "fl-scorer", key_path, scope).token(node.client)
    events = Events(node)
    sample = Sample(pid, eid, datetime(2024, 5, 1, tzinfo=UTC), (0.0,), None)
    statuses = []
    for probability in (0.31, 0.31):
        resource = risk_assessment(pid, sample, probability, "model-7", "readmission")
        statuses.append(
            store_assessment(node.client, "http://testserver", token, resource, f"model-7/{eid}")
        )
    assert statuses == [201, 200]
    [(ref, version, interaction, writer)] = events.take()
    assert ref.startswith("RiskAssessment/") and (version, interaction) == (1, "create")
    assert writer == "system:fl-scorer"
