"""Transaction Bundles refuse what FHIR forbids (issue 13 item 6) and are idempotent under an
``Idempotency-Key`` (item 10): over the real FastAPI app, on SQLite and PostgreSQL."""

from __future__ import annotations

import copy
import uuid
from typing import Any

from node_api.node_harness import PASSWORD, Node, outcome_text

KEY = "Idempotency-Key"


def _patient_and_obs(patient_url: str, ref: str) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": patient_url,
                "resource": {"resourceType": "Patient", "name": [{"family": "Tx"}]},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "hr"},
                    "subject": {"reference": ref},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }


def _big_transaction(n: int) -> dict[str, Any]:
    entries = []
    for i in range(n):
        pid = f"urn:uuid:{uuid.uuid4()}"
        entries.append(
            {
                "fullUrl": pid,
                "resource": {"resourceType": "Patient", "name": [{"family": f"Retry{i}"}]},
                "request": {"method": "POST", "url": "Patient"},
            }
        )
        entries.append(
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "hr"},
                    "subject": {"reference": pid},
                },
                "request": {"method": "POST", "url": "Observation"},
            }
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _locations(response: dict[str, Any]) -> list[str]:
    return [e["response"]["location"] for e in response["entry"]]


# --- item 6: what FHIR forbids ----------------------------------------------------------------


def test_transaction_with_undefined_urn_uuid_is_422_like_a_direct_create(node: Node) -> None:
    h = node.login("doctor1")
    bundle = _patient_and_obs(f"urn:uuid:{uuid.uuid4()}", f"urn:uuid:{uuid.uuid4()}")
    r = node.post("/fhir", bundle, h)
    assert r.status_code == 422, r.text
    assert "Bundle.entry[1]" in outcome_text(r) and "fullUrl" in outcome_text(r)
    assert node.store.counts() == {}  # nothing stored, not even the Patient
    direct = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "hr"},
        "subject": {"reference": "Patient/not-here"},
    }
    assert node.post("/fhir/Observation", direct, h).status_code == 422  # the same rule
    direct["subject"] = {"reference": f"urn:uuid:{uuid.uuid4()}"}
    assert node.post("/fhir/Observation", direct, h).status_code == 422
    assert node.store.counts() == {}


def test_transaction_with_defined_urn_uuid_still_resolves(node: Node) -> None:
    h = node.login("doctor1")
    pid = f"urn:uuid:{uuid.uuid4()}"
    r = node.post("/fhir", _patient_and_obs(pid, pid), h)
    assert r.status_code == 200, r.text
    patient_loc, obs_loc = _locations(r.json())
    obs = node.client.get(f"/fhir/{obs_loc.rsplit('/_history', 1)[0]}", headers=h).json()
    assert obs["subject"]["reference"] == patient_loc.rsplit("/_history", 1)[0]


def test_transaction_with_duplicate_full_url_is_400_bdl7(node: Node) -> None:
    h = node.login("doctor1")
    pid = f"urn:uuid:{uuid.uuid4()}"
    bundle = _patient_and_obs(pid, pid)
    bundle["entry"][1]["fullUrl"] = pid  # two entries, one fullUrl
    r = node.post("/fhir", bundle, h)
    assert r.status_code == 400, r.text
    assert "bdl-7" in outcome_text(r) and "Bundle.entry[1]" in outcome_text(r)
    assert node.store.counts() == {}


def test_batch_duplicate_full_url_is_400_and_unresolved_urn_is_a_per_entry_422(
    node: Node,
) -> None:
    h = node.login("doctor1")
    pid = f"urn:uuid:{uuid.uuid4()}"
    bundle = _patient_and_obs(pid, pid)
    bundle["type"] = "batch"
    bundle["entry"][1]["fullUrl"] = pid
    r = node.post("/fhir", bundle, h)
    assert r.status_code == 400 and "bdl-7" in outcome_text(r)
    assert node.store.counts() == {}
    # batch entries may not refer to each other (FHIR): the Observation alone is refused
    bundle = _patient_and_obs(pid, pid)
    bundle["type"] = "batch"
    r = node.post("/fhir", bundle, h)
    assert r.status_code == 200, r.text
    statuses = [e["response"]["status"] for e in r.json()["entry"]]
    assert statuses[0].startswith("201") and statuses[1] == "422"
    outcome = r.json()["entry"][1]["response"]["outcome"]
    assert outcome["resourceType"] == "OperationOutcome"
    assert node.store.counts() == {"Patient": 1}


# --- item 10: idempotent transactions ---------------------------------------------------------


def test_retry_with_same_key_returns_first_response_and_writes_once(node: Node) -> None:
    h = node.login("doctor1")
    bundle = _big_transaction(5)
    first = node.post("/fhir", bundle, h, extra={KEY: "retry-1"})
    assert first.status_code == 200, first.text
    counts = node.store.counts()
    head = node.store.events.head()
    again = node.post("/fhir", copy.deepcopy(bundle), h, extra={KEY: "retry-1"})
    assert again.status_code == 200, again.text
    assert _locations(again.json()) == _locations(first.json())  # same ids and versions
    assert node.store.counts() == counts == {"Observation": 5, "Patient": 5}
    assert node.store.events.head() == head  # nothing committed
    unkeyed = node.post("/fhir", bundle, h)  # without a key FHIR's POST semantics hold
    assert unkeyed.status_code == 200 and node.store.counts()["Patient"] == 10


def test_same_key_with_different_bundle_is_422_and_nothing_written(node: Node) -> None:
    h = node.login("doctor1")
    assert node.post("/fhir", _big_transaction(1), h, extra={KEY: "k-2"}).status_code == 200
    other = node.post("/fhir", _big_transaction(2), h, extra={KEY: "k-2"})
    assert other.status_code == 422 and "Idempotency-Key" in outcome_text(other)
    assert node.store.counts() == {"Observation": 1, "Patient": 1}


def test_a_refused_transaction_does_not_use_up_its_key(node: Node) -> None:
    h = node.login("doctor1")
    pid = f"urn:uuid:{uuid.uuid4()}"
    bad = _patient_and_obs(pid, f"urn:uuid:{uuid.uuid4()}")
    assert node.post("/fhir", bad, h, extra={KEY: "k-3"}).status_code == 422
    assert node.post("/fhir", bad, h, extra={KEY: "k-3"}).status_code == 422  # not remembered
    fixed = _patient_and_obs(pid, pid)
    assert node.post("/fhir", fixed, h, extra={KEY: "k-3"}).status_code == 200
    assert node.store.counts() == {"Observation": 1, "Patient": 1}


def test_keys_belong_to_their_writer(node: Node) -> None:
    node.app.state.auth.accounts.add_user("doctor2", PASSWORD, "doctor")
    doctor, other = node.login("doctor1"), node.login("doctor2")
    bundle = _big_transaction(1)
    a = node.post("/fhir", bundle, doctor, extra={KEY: "shared"})
    b = node.post("/fhir", bundle, other, extra={KEY: "shared"})
    assert a.status_code == b.status_code == 200, b.text
    assert _locations(a.json()) != _locations(b.json())  # no response leaks across writers
    assert node.store.counts()["Patient"] == 2


def test_bad_keys_and_keys_on_batches_are_400(node: Node) -> None:
    h = node.login("doctor1")
    for key in ("x" * 201, "two words"):
        r = node.post("/fhir", _big_transaction(1), h, extra={KEY: key})
        assert r.status_code == 400 and "Idempotency-Key" in outcome_text(r)
    batch = {**_big_transaction(1), "type": "batch"}
    batch["entry"] = batch["entry"][:1]
    r = node.post("/fhir", batch, h, extra={KEY: "b-1"})
    assert r.status_code == 400 and "transaction" in outcome_text(r)
    assert node.store.counts() == {}


def test_capability_statement_documents_the_rules(node: Node) -> None:
    rest = node.client.get("/fhir/metadata").json()["rest"][0]
    docs = {i["code"]: i.get("documentation", "") for i in rest["interaction"]}
    assert "Idempotency-Key" in docs["transaction"] and "bdl-7" in docs["transaction"]
