"""Issue 4 end to end over real processes and real mTLS: consent registry, coordinator and three
nodes. Referral with exactly the consented classes, Task status flowing back, consultation
advice, record pull with provenance; refusals (must-show 1 and 2)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from exchange_net import (
    Coordinator,
    Region,
    patient_bundle,
    register,
    seed,
    start_consent,
    wait_for,
)

from deploy.launcher import free_port, start_service
from node.exchange.documents import EXCHANGE_TAG_SYSTEM, PSEUDONYM_SYSTEM

pytestmark = pytest.mark.slow

NID, NAME = "HF-1951-0042", "Margarethe Quellenberg"
CONSENTED_B = [
    "Patient",
    "Condition",
    "Observation",
    "MedicationStatement",
    "ServiceRequest",
    "Communication",
]
_PSEUDO: list[str] = []
CONSENTED_A = ["Patient", "Condition", "Observation", "ServiceRequest"]


@pytest.fixture(scope="module")
def region(pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Region]:
    root = tmp_path_factory.mktemp("region")
    consent_url, consent_service = start_consent(root, pki)
    net = Region(root, pki, consent_url, consent_service, root / "linkage.key")
    try:
        data_dir = root / "coordinator"
        data_dir.mkdir()
        register(data_dir, pki)
        port, http_port = free_port(), free_port()
        args = ["coordinator", "serve", "--data-dir", str(data_dir), "--port", str(port),
                "--http-port", str(http_port), "--ca-dir", str(pki.ca_dir),
                "--org-dir", str(pki.org_dirs["coordinator"]), "--consent-url", consent_url,
                "--lease-seconds", "3"]  # fmt: skip
        url = f"http://127.0.0.1:{http_port}"
        service = start_service("coordinator", args, base_url=url, log_dir=root / "logs")
        net.coordinator = Coordinator(service, f"127.0.0.1:{port}", data_dir, url, args)
        net.start_node("hosp-a", "tertiary")
        net.start_node("clinic-b", "community")
        net.start_node("clinic-c", "community")
        seed(net.nodes["hosp-a"], patient_bundle(NID, name=NAME))
        pseudo = net.pseudonym(NID)
        _PSEUDO.append(pseudo)
        headers = net.patient_token(pseudo)
        net.consent_id = net.grant(
            headers, pseudo, {"clinic-b": CONSENTED_B, "hosp-a": CONSENTED_A}
        )  # type: ignore[attr-defined]
        net.patient_headers = headers  # type: ignore[attr-defined]
        yield net
    finally:
        net.stop()


def _imported(node, rtype: str) -> list[dict]:
    return [
        r for r in node.search(rtype)
        if any(t.get("system") == EXCHANGE_TAG_SYSTEM for t in r.get("meta", {}).get("tag", []))
    ]  # fmt: skip


def _task_status(node, task_ref: str) -> str:
    return node.get(f"/fhir/{task_ref}")["status"]


def test_referral_carries_exactly_the_consented_classes_and_status_flows_back(
    region: Region,
) -> None:
    a, b = region.nodes["hosp-a"], region.nodes["clinic-b"]
    r = a.post("/exchange/requests", {
        "kind": "referral", "patient": f"Patient/p-{NID}", "recipient": "clinic-b",
        "reason": "Discharged after heart-failure admission; follow-up near home",
    })  # fmt: skip
    assert r.status_code == 201, r.text
    sent = r.json()
    assert sent["state"] == "sent"
    assert set(sent["classes"]) == {
        "Patient",
        "Condition",
        "Observation",
        "MedicationStatement",
        "ServiceRequest",
    }

    wait_for(lambda: _imported(b, "Task"), what="the referral Task at clinic B")
    types = {
        rtype for rtype in ["Condition", "Observation", "MedicationStatement", "ServiceRequest",
                            "Procedure", "AllergyIntolerance", "Composition", "Provenance", "Task"]
        if _imported(b, rtype)
    }  # fmt: skip
    assert types == {"Condition", "Observation", "MedicationStatement", "ServiceRequest",
                     "Composition", "Provenance", "Task"}  # fmt: skip
    condition = _imported(b, "Condition")[0]
    assert condition["meta"]["source"].startswith("urn:ipjms:org:hosp-a")
    assert condition["subject"]["reference"].startswith("Patient/")
    # B accepts → A's Task follows
    task_b = _imported(b, "Task")[0]
    r = b.post(f"/exchange/tasks/{task_b['id']}/accept", {})
    assert r.status_code == 200, r.text
    wait_for(lambda: _task_status(a, sent["task"]) == "accepted", what="accepted at A")
    r = b.post(f"/exchange/tasks/{task_b['id']}/start", {})
    assert r.status_code == 200, r.text
    wait_for(lambda: _task_status(a, sent["task"]) == "in-progress", what="in-progress at A")
    # an impossible transition is refused locally and nothing is sent
    r = b.post(f"/exchange/tasks/{task_b['id']}/accept", {})
    assert r.status_code == 409


def test_consultation_advice_returns_to_the_requester(region: Region) -> None:
    a, b = region.nodes["hosp-a"], region.nodes["clinic-b"]
    patient_b = _imported_patient(b)
    r = b.post("/exchange/requests", {
        "kind": "consultation", "patient": patient_b, "recipient": "hosp-a",
        "reason": "Worsening dyspnoea", "question": "Increase the loop diuretic?",
    })  # fmt: skip
    assert r.status_code == 201, r.text
    sent = r.json()
    wait_for(
        lambda: [t for t in _imported(a, "Task") if t["status"] == "requested"],
        what="consultation at A",
    )
    task_a = [t for t in _imported(a, "Task") if t["status"] == "requested"][0]
    r = a.post(
        f"/exchange/tasks/{task_a['id']}/answer", {"text": "Increase furosemide to 80 mg daily."}
    )
    assert r.status_code == 200, r.text
    wait_for(lambda: _task_status(b, sent["task"]) == "completed", what="advice at B")
    task_b = b.get(f"/fhir/{sent['task']}")
    advice_ref = task_b["output"][0]["valueReference"]["reference"]
    advice = b.get(f"/fhir/{advice_ref}")
    assert advice["resourceType"] == "Communication"
    assert advice["payload"][0]["contentString"] == "Increase furosemide to 80 mg daily."
    assert advice["meta"]["source"].startswith("urn:ipjms:org:hosp-a")


def _imported_patient(node) -> str:
    """The patient at ``node`` that the pseudonym maps to (created or linked on import)."""
    patients = node.search("Patient", identifier=f"{PSEUDONYM_SYSTEM}|{_PSEUDO[0]}")
    return f"Patient/{patients[0]['id']}"


def test_no_consent_is_refused_at_the_coordinator_and_audited(region: Region) -> None:
    a = region.nodes["hosp-a"]
    r = a.post("/exchange/requests", {
        "kind": "referral", "patient": f"Patient/p-{NID}", "recipient": "clinic-c", "reason": "x",
    })  # fmt: skip
    assert r.status_code == 403, r.text
    assert "consent" in r.text
