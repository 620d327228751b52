"""Required terminology bindings over HTTP: a code outside its required R4 value set is refused
with an OperationOutcome naming the element and the allowed codes, and nothing is stored — on
SQLite and PostgreSQL."""

from __future__ import annotations

from node_api.node_harness import Node, outcome_text


def _patient() -> dict:
    return {"resourceType": "Patient", "name": [{"family": "Binding"}], "gender": "female"}


def test_bad_status_in_transaction_refused_and_store_unchanged(node: Node) -> None:
    doc = node.login("doctor1")
    before = node.store.counts()
    patient_url = "urn:uuid:bbbbbbbb-0000-4000-8000-000000000001"
    txn = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": patient_url,
                "resource": _patient(),
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "bogus",
                    "code": {"text": "heart rate"},
                    "subject": {"reference": patient_url},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    r = node.post("/fhir", txn, doc)
    assert r.status_code == 400
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    issue = outcome["issue"][0]
    assert issue["code"] == "code-invalid"
    assert "Observation.status" in issue["expression"]
    text = outcome_text(r)
    assert "'bogus'" in text and "registered" in text and "entered-in-error" in text
    assert node.store.counts() == before

    # The same transaction with a valid status goes through (the refusal was the binding).
    txn["entry"][1]["resource"]["status"] = "final"
    r = node.post("/fhir", txn, doc)
    assert r.status_code == 200, outcome_text(r)
    assert node.store.counts() != before


def test_bad_gender_on_create_and_update_refused(node: Node) -> None:
    doc = node.login("doctor1")
    pid = node.post("/fhir/Patient", _patient(), doc).json()["id"]
    before = node.store.counts()

    r = node.post("/fhir/Patient", {**_patient(), "gender": "F"}, doc)
    assert r.status_code == 400 and "Patient.gender" in outcome_text(r)
    r = node.put(f"/fhir/Patient/{pid}", {**_patient(), "id": pid, "gender": "F"}, doc)
    assert r.status_code == 400 and "male, female, other, unknown" in outcome_text(r)
    assert node.store.counts() == before
    assert node.client.get(f"/fhir/Patient/{pid}", headers=doc).json()["gender"] == "female"
