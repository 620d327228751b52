"""End to end over a real node process (`ipjms node serve` with care on): a Condition I50
(written directly, and inside a transaction Bundle as an import writes it) → an active CarePlan
instantiating the HF PlanDefinition; rising home weights → one DetectedIssue on the doctor's
SSE stream (latency printed) and in FHIR search; a subscriber that reconnects with
Last-Event-ID misses nothing and gets no duplicate; acknowledge is recorded (mitigation +
Provenance); bad readings are a 400 OperationOutcome and raise nothing."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from deploy.launcher import ipjms_command, start_service

pytestmark = pytest.mark.slow
PASSWORD = "care-e2e-password-1"
FHIR = "application/fhir+json"
ICD10 = "http://hl7.org/fhir/sid/icd-10"


def _ipjms(*args: str, env: dict[str, str] | None = None) -> None:
    full = {**os.environ, **(env or {})}
    r = subprocess.run(ipjms_command(*args), capture_output=True, text=True, env=full, timeout=240)
    assert r.returncode == 0, r.stderr


class Stream:
    """An SSE subscriber on its own thread: (event id, data, arrival time) into a queue."""

    def __init__(self, url: str, token: str, last_event_id: str | None = None) -> None:
        self.events: queue.Queue[tuple[str, dict, float]] = queue.Queue()
        headers = {"Authorization": f"Bearer {token}"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        self._client = httpx.Client(timeout=httpx.Timeout(60.0, read=None))
        self.ready = threading.Event()
        self._thread = threading.Thread(
            target=self._read, args=(f"{url}/care/alerts/stream", headers), daemon=True
        )
        self._thread.start()
        assert self.ready.wait(30), "stream did not open"

    def _read(self, url: str, headers: dict[str, str]) -> None:
        try:
            with self._client.stream("GET", url, headers=headers) as r:
                assert r.status_code == 200, r.read()
                self.ready.set()
                eid, data = None, None
                for line in r.iter_lines():
                    if line.startswith("id: "):
                        eid = line[4:]
                    elif line.startswith("data: "):
                        data = json.loads(line[6:])
                    elif line == "" and eid is not None and data is not None:
                        self.events.put((eid, data, time.monotonic()))
                        eid, data = None, None
        except (httpx.HTTPError, RuntimeError):
            pass  # closed by the test

    def next(self, timeout: float = 20.0) -> tuple[str, dict, float]:
        return self.events.get(timeout=timeout)

    def close(self) -> None:
        self._client.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    tmp = tmp_path_factory.mktemp("care-e2e")
    data_dir = tmp / "node"
    _ipjms("node", "init", "--org", "org-clinic-b", "--name", "Clinic B", "--data-dir",
           str(data_dir), "--level", "community",
           env={"IPJMS_ADMIN_PASSWORD": PASSWORD})  # fmt: skip
    _ipjms("node", "user", "add", "--data-dir", str(data_dir), "--username", "dr-wang",
           "--role", "doctor", env={"IPJMS_USER_PASSWORD": PASSWORD})  # fmt: skip
    # the worker process's log poll is set to a minute, longer than any wait below: every
    # enrolment and alert here reaches it by the wake its parent sends after each commit
    env = {"IPJMS_NODE_CARE_ENABLED": "true", "IPJMS_NODE_CARE_RESPONSIBLE_USER": "dr-wang",
           "IPJMS_NODE_CARE_TICK_SECONDS": "3600",
           "IPJMS_NODE_CARE__POLL_SECONDS": "60"}  # fmt: skip
    service = start_service("care-node", ["node", "serve", "--data-dir", str(data_dir), "--port",
                            "0"], base_url="http://127.0.0.1:{http}", log_dir=tmp / "logs",
                            env=env, ports_dir=data_dir)  # fmt: skip
    url = service.base_url
    try:
        token = httpx.post(
            f"{url}/auth/token",
            data={"grant_type": "password", "username": "dr-wang", "password": PASSWORD},
        ).json()["access_token"]
        yield url, token
    finally:
        service.stop()


def _post(url: str, token: str, path: str, body: dict) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": FHIR}
    return httpx.post(f"{url}{path}", headers=headers, content=json.dumps(body), timeout=30)


def _get(url: str, token: str, path: str) -> dict:
    r = httpx.get(f"{url}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _wait(predicate, timeout: float = 30.0):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _condition(pid: str, code: str) -> dict:
    return {
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                       "condition-clinical", "code": "active"}]},
        "code": {"coding": [{"system": ICD10, "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
    }  # fmt: skip


def _weight(pid: str, kg: float, when: datetime) -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when.isoformat(),
        "valueQuantity": {"value": kg, "unit": "kg", "system": "http://unitsofmeasure.org",
                          "code": "kg"},
    }  # fmt: skip


def _plans(url: str, token: str, pid: str) -> list[dict]:
    bundle = _get(url, token, f"/fhir/CarePlan?patient=Patient/{pid}&status=active")
    return [e["resource"] for e in bundle.get("entry", [])]


def _patient(url: str, token: str) -> str:
    r = _post(url, token, "/fhir/Patient", {"resourceType": "Patient"})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_condition_in_a_transaction_bundle_enrols(node) -> None:  # noqa: ANN001
    url, token = node
    new_patient = "urn:uuid:6b9d7f7e-0000-4000-8000-000000000001"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": new_patient, "resource": {"resourceType": "Patient"},
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": {**_condition("x", "I50.0"), "subject": {"reference": new_patient}},
             "request": {"method": "POST", "url": "Condition"}},
        ],
    }  # fmt: skip
    r = _post(url, token, "/fhir", bundle)
    assert r.status_code == 200, r.text
    pid = r.json()["entry"][0]["response"]["location"].split("/")[1]
    [plan] = _wait(lambda: _plans(url, token, pid))
    assert plan["instantiatesCanonical"][0].startswith(
        "https://ipjms.example.org/fhir/PlanDefinition/heart-failure|"
    )


def test_rising_weights_alert_reaches_the_doctor_stream_resumably(node) -> None:  # noqa: ANN001
    url, token = node
    pid = _patient(url, token)
    assert _post(url, token, "/fhir/Condition", _condition(pid, "I50.9")).status_code == 201
    [plan] = _wait(lambda: _plans(url, token, pid))
    assert plan["instantiatesCanonical"][0].split("|")[0].endswith("PlanDefinition/heart-failure")

    stream = Stream(url, token)
    now = datetime.now(UTC)
    for day, kg in enumerate([70.0, 70.9, 71.7]):
        r = _post(url, token, "/fhir/Observation", _weight(pid, kg, now - timedelta(days=3 - day)))
        assert r.status_code == 201, r.text
    posted = time.monotonic()
    assert _post(url, token, "/fhir/Observation", _weight(pid, 72.5, now)).status_code == 201
    eid, issue, arrived = stream.next()
    latency_ms = (arrived - posted) * 1000
    print(f"\nPOST → alert event on the doctor's stream: {latency_ms:.0f} ms")
    assert latency_ms < 5000
    assert issue["code"]["coding"][0]["code"] == "hf-weight-gain-3d"
    assert issue["patient"]["reference"] == f"Patient/{pid}"
    stream.close()

    search = _get(url, token, f"/fhir/DetectedIssue?patient=Patient/{pid}&status=preliminary")
    assert [e["resource"]["id"] for e in search["entry"]] == [issue["id"]]

    # while nobody listens: the doctor acknowledges; a reconnect from eid gets that, only
    path = f"/care/alerts/{issue['id']}/$acknowledge"
    assert _post(url, token, path, {"action": " "}).status_code == 400  # a text is required
    r = _post(url, token, path, {"action": "Phoned; furosemide increased; review in 1 week"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "final"
    mitigation = r.json()["mitigation"][0]
    assert mitigation["author"]["reference"].startswith("Practitioner/")
    assert _post(url, token, path, {"action": "again"}).status_code == 400  # no longer open
    provenance = _get(url, token, f"/fhir/Provenance?target=DetectedIssue/{issue['id']}")
    assert provenance["total"] == 1

    again = Stream(url, token, last_event_id=eid)
    eid2, changed, _ = again.next()
    assert int(eid2) > int(eid)
    assert changed["id"] == issue["id"] and changed["meta"]["versionId"] == "2"
    assert changed["status"] == "final"
    with pytest.raises(queue.Empty):
        again.next(timeout=1.0)  # nothing else: no duplicate of the first event
    again.close()


def test_bad_readings_are_a_400_outcome_and_raise_nothing(node) -> None:  # noqa: ANN001
    url, token = node
    pid = _patient(url, token)
    assert _post(url, token, "/fhir/Condition", _condition(pid, "I10")).status_code == 201
    _wait(lambda: _plans(url, token, pid))
    bp = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": datetime.now(UTC).isoformat(),
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
             "valueQuantity": {"value": 900, "unit": "mm[Hg]",
                               "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
        ],
    }  # fmt: skip
    r = _post(url, token, "/fhir/Observation", bp)
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    assert "not a plausible value" in r.text
    bp["component"][0]["valueQuantity"].update(value=186, code="mmHg", unit="mmHg")
    r = _post(url, token, "/fhir/Observation", bp)
    assert r.status_code == 400 and "not an accepted UCUM unit" in r.text
    assert _get(url, token, f"/fhir/Observation?patient=Patient/{pid}")["total"] == 0
    r = httpx.get(f"{url}/care/alerts/stream", headers={"Authorization": f"Bearer {token}",
                                                        "Last-Event-ID": "abc"})  # fmt: skip
    assert r.status_code == 400
    assert httpx.get(f"{url}/care/alerts/stream").status_code == 401
