"""Demo chapter: care management at the community clinics (issue 14).

``start`` turns the care engine on (``IPJMS_NODE_CARE_ENABLED``) for the community nodes, with
the demo's ``doctor`` account as the responsible practitioner and the coordinator's model
registry for the risk-model gate (``care.model_registry_url``), through
``net.facts["node_env_by_org"]`` (read when the nodes chapter starts them).

``run`` (after the exchange chapter referred the heart-failure patient down to clinic B): the
imported I50 Condition enrolled the patient in the heart-failure pathway (a CarePlan) → the
patient signs in once at the consent registry (OpenID Connect, PKCE) and with that token reads
their plan at clinic B and their consents at the registry → their scale uploads three days of
home weights rising 2.5 kg (Open mHealth, re-sent once: stored once) → an alert on B's doctor's
SSE stream (latency from the upload)
and the plan revised to an early follow-up → the doctor acknowledges with a mitigation → a
hypertensive patient's 186/112 raises an urgent alert, a 124/78 raises none.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from deploy.demo.network import DemoNetwork, NodeInfo

__all__ = ["start", "run", "ensure_heart_failure", "HF_CODES"]

ICD10 = "http://hl7.org/fhir/sid/icd-10"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
HF_CODES = ((ICD10, "I50"), (SNOMED, "84114007"))  # the HF pathway's enrolment codes
HF_PATHWAY = "https://ipjms.example.org/fhir/PlanDefinition/heart-failure"
HTN_PATHWAY = "https://ipjms.example.org/fhir/PlanDefinition/hypertension"
CONTROL_EXT = "https://ipjms.example.org/fhir/StructureDefinition/care-control-status"


def _poll(value: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll until ``value()`` is truthy and return it (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not (found := value()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)
    return found


def start(net: DemoNetwork) -> None:
    by_org = net.facts.setdefault("node_env_by_org", {})
    status_url = net.facts.get("coordinator", {}).get("status_url", "")
    registry = status_url.rsplit("/status", 1)[0] if status_url else ""
    for org, _name, level, _profile in net.node_specs:
        if level == "community":
            env = by_org.setdefault(org, {})
            env["IPJMS_NODE_CARE_ENABLED"] = "true"
            env["IPJMS_NODE_CARE_RESPONSIBLE_USER"] = "doctor"
            if registry:  # the risk-model gate reads model cards there (node/care/model_cards)
                env["IPJMS_NODE_CARE__MODEL_REGISTRY_URL"] = registry


def _omh_weight(kg: float, when: datetime) -> dict[str, Any]:
    """A reading as the patient's scale app sends it: an Open mHealth body-weight data point
    (its uuid is the client identifier that makes a re-send change nothing)."""
    stamp = f"{when:%Y%m%d}{int(kg * 10):04d}"
    return {
        "header": {"uuid": f"00000000-0000-4000-8000-{stamp}",
                   "schema_id": {"namespace": "omh", "name": "body-weight", "version": "2.0"}},
        "body": {"body_weight": {"value": kg, "unit": "kg"},
                 "effective_time_frame": {"date_time": when.isoformat()}},
    }  # fmt: skip


def _patient_signs_in(net: DemoNetwork, clinic: NodeInfo, pid: str) -> _Fhir:
    """The patient's one sign-in at the registry, then their plan at the clinic and their
    consents at the registry with that same token."""
    from deploy.demo.chapter_consent import _PATIENT_PASSWORD_FILE
    from deploy.demo.patient_app import sign_in

    registry = net.facts["consent_url"]
    username = net.facts["consent"]["patient_username"]
    password = (net.service_dir("consent") / _PATIENT_PASSWORD_FILE).read_text().strip()
    with net.step("The patient signs in once, for the clinic and the registry") as notes:
        started = time.monotonic()
        tokens = sign_in(registry, username, password)
        took = 1000 * (time.monotonic() - started)
        notes.append(f"authorization code + PKCE at the registry: {took:.0f} ms; ID token for "
                     f"{tokens['patient'][:12]}…")  # fmt: skip
        patient = _Fhir(clinic, {"Authorization": f"Bearer {tokens['access_token']}"})
        active = patient.search("CarePlan", patient=f"Patient/{pid}", status="active")
        plans = [p for p in active if _is_hf_plan(p)]
        if not plans:
            raise RuntimeError("the patient's token does not show their CarePlan at the clinic")
        notes.append(f"{clinic.org_id}: the patient reads their plan: {_describe(plans[0])}")
        r = httpx.get(f"{registry}/fhir/Consent", params={"patient": tokens["patient"]},
                      headers=patient.headers, timeout=30)  # fmt: skip
        if r.status_code != 200:
            raise RuntimeError(f"the same token at the registry: {r.status_code} {r.text[:200]}")
        notes.append(f"registry: the same token lists their {r.json().get('total', 0)} consent(s)")
        other = httpx.get(f"{clinic.url}/fhir/Observation", params={"patient": "Patient/x"},
                          headers=patient.headers, timeout=30)  # fmt: skip
        notes.append(f"another patient's readings with that token: HTTP {other.status_code}")
        if other.status_code != 403:
            raise RuntimeError("a patient token reached another patient's search")
    return patient


def _is_hf_plan(plan: dict[str, Any]) -> bool:
    return any(c.startswith(HF_PATHWAY) for c in plan.get("instantiatesCanonical", []))


def _is_hf(condition: dict[str, Any]) -> bool:
    active = any(
        c.get("code") == "active" for c in condition.get("clinicalStatus", {}).get("coding", [])
    )
    codes = condition.get("code", {}).get("coding", [])
    return active and any(
        c.get("system", "").startswith(system) and str(c.get("code", "")).startswith(code)
        for c in codes
        for system, code in HF_CODES
    )


def _condition(pid: str, code: str, display: str) -> dict[str, Any]:
    status = "http://terminology.hl7.org/CodeSystem/condition-clinical"
    return {
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": status, "code": "active"}]},
        "code": {"coding": [{"system": ICD10, "code": code, "display": display}]},
        "subject": {"reference": f"Patient/{pid}"},
        "recordedDate": datetime.now(UTC).date().isoformat(),
    }


def ensure_heart_failure(node: NodeInfo, headers: dict[str, str], pid: str) -> str:
    """The patient's active heart-failure Condition at ``node`` (recorded now if none): the
    referral carries it. Returns a line saying which."""
    r = httpx.get(f"{node.url}/fhir/Condition", params={"patient": f"Patient/{pid}",
                  "_count": "200"}, headers=headers, timeout=60)  # fmt: skip
    r.raise_for_status()
    found = [e["resource"] for e in r.json().get("entry", []) if _is_hf(e["resource"])]
    if found:
        return f"the patient's active heart-failure Condition/{found[0]['id']} travels with it"
    body = _condition(pid, "I50.9", "Heart failure, unspecified")
    r = httpx.post(f"{node.url}/fhir/Condition", json=body, headers=headers, timeout=60)
    r.raise_for_status()
    return f"discharge diagnosis recorded first: Condition/{r.json()['id']} I50.9 (active)"


class _Stream:
    """B's doctor subscribed to ``/care/alerts/stream``: (DetectedIssue, arrival) per event."""

    def __init__(self, node: NodeInfo, headers: dict[str, str]) -> None:
        self.events: queue.Queue[tuple[dict[str, Any], float]] = queue.Queue()
        self._client = httpx.Client(timeout=httpx.Timeout(60.0, read=None))
        self._ready = threading.Event()
        self._error = ""
        url = f"{node.url}/care/alerts/stream"
        threading.Thread(target=self._read, args=(url, headers), daemon=True).start()
        if not self._ready.wait(30) or self._error:
            raise RuntimeError(f"alert stream did not open {self._error}")

    def _read(self, url: str, headers: dict[str, str]) -> None:
        try:
            with self._client.stream("GET", url, headers=headers) as r:
                if r.status_code != 200:
                    self._error = f"({r.status_code})"
                    self._ready.set()
                    return
                self._ready.set()
                data = None
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        data = json.loads(line[6:])
                    elif line == "" and data is not None:
                        self.events.put((data, time.monotonic()))
                        data = None
        except (httpx.HTTPError, RuntimeError):
            pass  # closed at the end of the chapter

    def next_for(self, pid: str, timeout: float) -> tuple[dict[str, Any], float] | None:
        """The next event about ``Patient/pid`` within ``timeout`` seconds, else None."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                issue, arrived = self.events.get(timeout=left)
            except queue.Empty:
                return None
            if issue.get("patient", {}).get("reference") == f"Patient/{pid}":
                return issue, arrived
        return None

    def close(self) -> None:
        self._client.close()


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def _bp(pid: str, systolic: int, diastolic: int) -> dict[str, Any]:
    def part(code: str, value: int) -> dict[str, Any]:
        return {"code": {"coding": [{"system": LOINC, "code": code}]},
                "valueQuantity": _quantity(value, "mm[Hg]")}  # fmt: skip

    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": datetime.now(UTC).isoformat(),
        "component": [part("8480-6", systolic), part("8462-4", diastolic)],
    }


class _Fhir:
    def __init__(self, node: NodeInfo, headers: dict[str, str]) -> None:
        self.node, self.headers = node, headers

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = httpx.post(f"{self.node.url}{path}", json=body, headers=self.headers, timeout=60)
        if r.status_code >= 300:
            raise RuntimeError(f"POST {path.split('?')[0]}: {r.status_code} {r.text[:300]}")
        return r.json()  # type: ignore[no-any-return]

    def search(self, rtype: str, **params: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.node.url}/fhir/{rtype}", params=params, headers=self.headers,
                      timeout=60)  # fmt: skip
        r.raise_for_status()
        return [e["resource"] for e in r.json().get("entry", [])]

    def plan(self, pid: str, pathway: str) -> dict[str, Any] | None:
        plans = self.search("CarePlan", patient=f"Patient/{pid}", status="active")
        mine = [p for p in plans if any(c.startswith(f"{pathway}|")
                                        for c in p.get("instantiatesCanonical", []))]  # fmt: skip
        return mine[0] if mine else None

    def next_follow_up(self, plan_id: str) -> tuple[str, str]:
        """(due date, action) of the plan's earliest open follow-up Task."""
        tasks = self.search("Task", **{"based-on": f"CarePlan/{plan_id}"})
        due = sorted(
            (t["restriction"]["period"]["end"][:10], t.get("description") or t["id"])
            for t in tasks
            if t.get("status") not in ("cancelled", "completed", "rejected")
            and t.get("restriction", {}).get("period", {}).get("end")
        )
        if not due:
            raise RuntimeError(f"CarePlan/{plan_id} has no open follow-up Task")
        return due[0]


def _describe(plan: dict[str, Any]) -> str:
    status = next((e.get("valueCode") for e in plan.get("extension", [])
                   if e.get("url") == CONTROL_EXT), "?")  # fmt: skip
    return f"CarePlan/{plan['id']} version {plan['meta']['versionId']}, control {status}"


def run(net: DemoNetwork) -> None:
    from deploy.demo.chapter_exchange import _doctor  # the demo's doctor account per node

    clinic_b = net.nodes[net.facts["consent"]["treat_recipient"]]
    fhir = _Fhir(clinic_b, _doctor(net, clinic_b))
    pid = net.facts["referral"]["patient_at_b"]

    with net.step(f"{clinic_b.org_id} enrols the referred heart-failure patient") as notes:
        conditions = [c for c in fhir.search("Condition", patient=f"Patient/{pid}") if _is_hf(c)]
        if not conditions:
            raise RuntimeError("the imported referral carries no active heart-failure Condition")
        code = conditions[0]["code"]["coding"][0]["code"]
        notes.append(f"imported Condition/{conditions[0]['id']} {code} (active)")
        plan = _poll(lambda: fhir.plan(pid, HF_PATHWAY), 60, "the heart-failure CarePlan")
        notes.append(f"{_describe(plan)}, instantiates {plan['instantiatesCanonical'][0]}")
        before = fhir.next_follow_up(plan["id"])
        notes.append(f"next follow-up due {before[0]} ({before[1]})")

    stream = _Stream(clinic_b, fhir.headers)
    try:
        patient = _patient_signs_in(net, clinic_b, pid)
        with net.step("The patient's scale uploads three days of weights rising 2.5 kg") as notes:
            now = datetime.now(UTC)
            earlier = [_omh_weight(kg, now - timedelta(days=d)) for d, kg in
                       ((3, 70.0), (2, 70.9), (1, 71.7))]  # fmt: skip
            patient.post("/patient/readings", earlier)  # type: ignore[arg-type]
            resent = patient.post("/patient/readings", earlier)  # type: ignore[arg-type]
            posted = time.monotonic()
            patient.post("/patient/readings", _omh_weight(72.5, now))
            notes.append("Open mHealth body-weight 70.0 → 70.9 → 71.7 → 72.5 kg (3 days ago … "
                         "today), under the patient's regional token")  # fmt: skip
            versions = {e["response"].get("etag") for e in resent["entry"]}
            notes.append(f"the app re-sent the first three after an offline spell: stored once "
                         f"(versions {', '.join(sorted(str(v) for v in versions))})")  # fmt: skip
            got = stream.next_for(pid, 30)
            if got is None:
                raise RuntimeError("no alert on the doctor's stream within 30 s")
            issue, arrived = got
            rule = issue["code"]["coding"][0]["code"]
            if rule != "hf-weight-gain-3d" or issue["status"] != "preliminary":
                raise RuntimeError(f"unexpected alert {rule} ({issue['status']})")
            notes.append(
                f"DetectedIssue/{issue['id']} {rule} ({issue.get('severity')}) on the SSE "
                f"stream {(arrived - posted) * 1000:.0f} ms after the POST"
            )

        with net.step("The follow-up moves earlier; the doctor records a mitigation") as notes:
            version = plan["meta"]["versionId"]
            revised = _poll(
                lambda: (p := fhir.plan(pid, HF_PATHWAY)) and p["meta"]["versionId"] != version,
                30,
                "the revised CarePlan",
            )
            revised = fhir.plan(pid, HF_PATHWAY) or revised
            after = fhir.next_follow_up(plan["id"])
            notes.append(f"on the alert's reading, not the acknowledgement: {_describe(revised)}")
            notes.append(f"reason: {revised.get('note', [{}])[-1].get('text', '?')}")
            notes.append(f"next follow-up {before[0]} → {after[0]} ({after[1]})")
            if not after[0] < before[0]:
                raise RuntimeError(f"the follow-up did not move earlier: {before[0]} → {after[0]}")
            action = "Phoned the patient; loop diuretic increased; review within a week"
            acked = fhir.post(f"/care/alerts/{issue['id']}/$acknowledge", {"action": action})
            if acked["status"] != "final" or not acked.get("mitigation"):
                raise RuntimeError(f"acknowledge left the alert {acked['status']}")
            notes.append(f"DetectedIssue/{issue['id']}: preliminary → final, mitigation "
                         f"'{acked['mitigation'][0]['action']['text']}'")  # fmt: skip
            provenance = fhir.search("Provenance", target=f"DetectedIssue/{issue['id']}")
            if len(provenance) != 1:
                raise RuntimeError(f"{len(provenance)} Provenance for the acknowledgement")
            notes.append(f"audited: Provenance/{provenance[0]['id']}")

        with net.step("A hypertensive patient's 186/112 is urgent; 124/78 raises none") as notes:
            hp = str(fhir.post("/fhir/Patient", {"resourceType": "Patient"})["id"])
            fhir.post("/fhir/Condition", _condition(hp, "I10", "Essential hypertension"))
            hplan = _poll(lambda: fhir.plan(hp, HTN_PATHWAY), 60, "the hypertension CarePlan")
            notes.append(f"Patient/{hp} (new, I10) enrolled: CarePlan/{hplan['id']}")
            posted = time.monotonic()
            fhir.post("/fhir/Observation", _bp(hp, 186, 112))
            got = stream.next_for(hp, 30)
            if got is None:
                raise RuntimeError("no alert for 186/112 within 30 s")
            urgent, arrived = got
            rule = urgent["code"]["coding"][0]["code"]
            if rule != "htn-bp-urgent" or urgent.get("severity") != "high":
                raise RuntimeError(f"186/112 raised {rule} ({urgent.get('severity')})")
            notes.append(f"186/112 → DetectedIssue/{urgent['id']} {rule} (high), "
                         f"{(arrived - posted) * 1000:.0f} ms to the stream")  # fmt: skip
            fhir.post("/fhir/Observation", _bp(hp, 124, 78))
            quiet = stream.next_for(hp, 5)
            if quiet is not None:
                raise RuntimeError(f"124/78 raised {quiet[0]['code']['coding'][0]['code']}")
            issues = fhir.search("DetectedIssue", patient=f"Patient/{hp}")
            if [i["id"] for i in issues] != [urgent["id"]]:
                raise RuntimeError(f"{len(issues)} DetectedIssues for the patient, expected 1")
            notes.append(
                "124/78 → nothing on the stream within 5 s; FHIR search: "
                f"{len(issues)} DetectedIssue for the patient (the 186/112 one)"
            )
    finally:
        stream.close()
