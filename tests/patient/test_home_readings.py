"""Issue 15 must-show 2 and 4 (readings): each home-reading type round-trips under the patient's
regional token; a re-sent reading is stored once; a PHD-shaped gateway Bundle and each Open
mHealth schema become the same Observations as the direct upload; the care rules see them (a
rising HF weight uploaded by the patient alerts the doctor); bad input is a 4xx with nothing
stored."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from patient.region_harness import Region
from patient.stored import stored

from node.patient.readings import LOINC, MDC, UCUM

NOW = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def _fhir(code: str, value: float, unit: str, when: datetime = NOW, **kw: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "effectiveDateTime": when.isoformat(),
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
        **kw,
    }


def _bp(sys_: float, dia: float, when: datetime = NOW, unit: str = "mm[Hg]") -> dict[str, Any]:
    q = {"unit": unit, "system": UCUM, "code": unit}
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
        "effectiveDateTime": when.isoformat(),
        "component": [
            {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
             "valueQuantity": {"value": sys_, **q}},
            {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
             "valueQuantity": {"value": dia, **q}},
        ],
    }  # fmt: skip


# kind → (direct FHIR upload, the same reading as an Open mHealth data point)
def _omh(name: str, body: dict[str, Any]) -> dict[str, Any]:
    body = {**body, "effective_time_frame": {"date_time": NOW.isoformat()}}
    header = {"uuid": str(uuid.uuid4()),
              "schema_id": {"namespace": "omh", "name": name, "version": "3.0"}}  # fmt: skip
    return {"header": header, "body": body}


CASES = {
    "blood-pressure": (
        _bp(132, 84),
        _omh(
            "blood-pressure",
            {
                "systolic_blood_pressure": {"value": 132, "unit": "mmHg"},
                "diastolic_blood_pressure": {"value": 84, "unit": "mmHg"},
            },
        ),
    ),  # fmt: skip
    "blood-glucose": (
        _fhir("41653-7", 110, "mg/dL"),
        _omh("blood-glucose", {"blood_glucose": {"value": 110, "unit": "mg/dL"}}),
    ),
    "body-weight": (
        _fhir("29463-7", 71.5, "kg"),
        _omh("body-weight", {"body_weight": {"value": 71.5, "unit": "kg"}}),
    ),
    "heart-rate": (
        _fhir("8867-4", 64, "/min"),
        _omh("heart-rate", {"heart_rate": {"value": 64, "unit": "beats/min"}}),
    ),
    "oxygen-saturation": (
        _fhir("59408-5", 96, "%"),
        _omh("oxygen-saturation", {"oxygen_saturation": {"value": 96, "unit": "%"}}),
    ),
    "body-temperature": (_fhir("8310-5", 36.8, "Cel"), None),
}


def _upload(region: Region, body: Any, headers: dict[str, str] | None = None) -> Any:
    return region.node.post("/patient/readings", json=body, headers=headers or region.a.headers)


def _stored(region: Region, response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    out = []
    for entry in response.json()["entry"]:
        rtype, rid = entry["response"]["location"].split("/")[:2]
        out.append(region.store.read(rtype, rid))
    return out


def _clinical(obs: dict[str, Any]) -> dict[str, Any]:
    """What must be equal whichever shape the reading arrived in."""
    keep = ("resourceType", "status", "category", "code", "subject", "performer",
            "effectiveDateTime", "valueQuantity")  # fmt: skip
    out = {k: obs.get(k) for k in keep}
    out["code"] = {"coding": [c for c in obs["code"]["coding"] if c["system"] == LOINC]}
    if obs.get("valueQuantity"):
        q = obs["valueQuantity"]
        out["valueQuantity"] = {"value": q["value"], "system": q["system"], "code": q["code"]}
    out["component"] = [
        {"code": c["code"]["coding"][0]["code"], "value": c["valueQuantity"]["value"],
         "unit": c["valueQuantity"]["code"]} for c in obs.get("component") or []
    ]  # fmt: skip
    return out


@pytest.mark.parametrize("kind", sorted(CASES))
def test_each_reading_type_round_trips_and_every_shape_gives_the_same_observation(
    region: Region, kind: str
) -> None:
    direct, omh = CASES[kind]
    [stored] = _stored(region, _upload(region, direct))
    me = {"reference": f"Patient/{region.a.patient_id}"}
    assert stored["subject"] == me and stored["performer"] == [me]
    assert stored["category"][0]["coding"][0]["code"] == "vital-signs"
    r = region.node.get(f"/fhir/Observation/{stored['id']}", headers=region.a.headers)
    assert r.status_code == 200 and _clinical(r.json()) == _clinical(stored)
    if omh is not None:
        [from_omh] = _stored(region, _upload(region, omh))
        assert _clinical(from_omh) == _clinical(stored)


def test_a_resent_reading_is_stored_once(region: Region) -> None:
    reading = _fhir("8867-4", 71, "/min", identifier=[
        {"system": "urn:ipjms:test-app", "value": f"hr-{uuid.uuid4()}"}])  # fmt: skip
    first = _stored(region, _upload(region, reading))
    count = region.store.counts()["Observation"]
    again = _stored(region, _upload(region, reading))  # back online: the app sends it again
    assert [o["id"] for o in again] == [o["id"] for o in first]
    assert again[0]["meta"]["versionId"] == first[0]["meta"]["versionId"] == "1"
    assert region.store.counts()["Observation"] == count
    # another patient's reading with the same client identifier is a different reading
    [b_reading] = _stored(region, _upload(region, reading, region.b.headers))
    assert b_reading["id"] != first[0]["id"]


def test_a_phd_gateway_bundle_becomes_the_same_observations(region: Region) -> None:
    device = {
        "resourceType": "Device",
        "identifier": [{"system": "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680",
                        "value": "FE-ED-AB-EE-DE-AD-BE-EF"}],
        "manufacturer": "Example Health", "modelNumber": "BP-1", "serialNumber": "SN-77",
        "type": {"coding": [{"system": MDC, "code": "65573"}]},
    }  # fmt: skip
    bp = _bp(132, 84)
    bp["code"]["coding"].append({"system": MDC, "code": "150020"})
    bp["device"] = {"reference": "urn:uuid:dev-1"}
    bp["meta"] = {
        "profile": ["http://hl7.org/fhir/uv/phd/StructureDefinition/PhdCompoundNumericObservation"]
    }
    weight = _fhir("29463-7", 71.5, "kg", device={"reference": "urn:uuid:dev-1"})
    weight["code"] = {"coding": [{"system": MDC, "code": "188736"}]}  # MDC only: mapped
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:dev-1", "resource": device,
         "request": {"method": "POST", "url": "Device"}},
        {"fullUrl": "urn:uuid:o-1", "resource": bp,
         "request": {"method": "POST", "url": "Observation"}},
        {"fullUrl": "urn:uuid:o-2", "resource": weight,
         "request": {"method": "POST", "url": "Observation"}},
    ]}  # fmt: skip
    stored = _stored(region, _upload(region, bundle))
    stored_device = next(s for s in stored if s["resourceType"] == "Device")
    obs = [s for s in stored if s["resourceType"] == "Observation"]
    assert stored_device["patient"] == {"reference": f"Patient/{region.a.patient_id}"}
    assert all(o["device"] == {"reference": f"Device/{stored_device['id']}"} for o in obs)
    [direct_bp] = _stored(region, _upload(region, _bp(132, 84)))
    [direct_w] = _stored(region, _upload(region, _fhir("29463-7", 71.5, "kg")))
    assert [_clinical(o) for o in obs] == [_clinical(direct_bp), _clinical(direct_w)]
    # the gateway sends the same Bundle again: the device is not duplicated
    devices = region.store.counts()["Device"]
    _stored(region, _upload(region, bundle))
    assert region.store.counts()["Device"] == devices


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (_fhir("29463-7", 71.5, "mm[Hg]"), 422, "not a unit of body-weight"),
        (_fhir("29463-7", 7150, "kg"), 422, "plausible"),
        (_bp(400, 84), 422, "plausible"),
        (_fhir("8867-4", 64, "beats"), 422, "not a unit"),
        (_fhir("2160-0", 1.1, "mg/dL"), 422, "not a home reading"),
        ({"header": {"schema_id": {"name": "step-count"}}, "body": {}}, 422, "schema_id"),
        ([_fhir("29463-7", 70, "kg"), _fhir("29463-7", 700, "kg")], 422, "plausible"),
    ],
    ids=[
        "wrong-unit",
        "implausible",
        "implausible-bp",
        "non-ucum",
        "unknown-kind",
        "unknown-omh-schema",
        "one-bad-in-many",
    ],  # fmt: skip
)
def test_bad_readings_are_refused_and_nothing_is_stored(
    region: Region, body: Any, status: int, says: str
) -> None:
    if isinstance(body, list):  # two FHIR Observations: as a gateway Bundle
        body = {"resourceType": "Bundle", "type": "transaction",
                "entry": [{"resource": o} for o in body]}  # fmt: skip
    before = stored(region, "Observation", "Device")
    r = _upload(region, body)
    assert r.status_code == status, r.text
    assert r.json()["resourceType"] == "OperationOutcome" and says in r.text
    assert stored(region, "Observation", "Device") == before


def test_a_reading_for_someone_else_is_refused(region: Region) -> None:
    before = stored(region, "Observation", "Device")
    other = {"reference": f"Patient/{region.b.patient_id}"}
    for path, body in (
        ("/patient/readings", _fhir("29463-7", 70, "kg", subject=other)),
        ("/fhir/Observation", _fhir("29463-7", 70, "kg", subject=other)),
        (f"/patient/readings?patient={region.b.patient_id}", _fhir("29463-7", 70, "kg")),
    ):
        r = region.node.post(path, json=body, headers=region.a.headers)
        assert r.status_code == 403, (path, r.text)
        assert r.json()["resourceType"] == "OperationOutcome"
    assert stored(region, "Observation", "Device") == before


def test_rising_weight_uploaded_by_the_patient_alerts_the_doctor(region: Region) -> None:
    a = region.a
    condition = {
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                       "condition-clinical", "code": "active"}]},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "I50.9"}]},
        "subject": {"reference": f"Patient/{a.patient_id}"},
    }  # fmt: skip
    assert region.post("/fhir/Condition", condition, region.doctor).status_code == 201
    _until(lambda: _search(region, f"CarePlan?patient={a.patient_id}&status=active"))
    now = datetime.now(UTC).replace(microsecond=0)
    points = []
    for d, kg in enumerate((70.0, 70.8, 71.6, 72.5)):  # +2.5 kg in 3 days
        point = _omh("body-weight", {"body_weight": {"value": kg, "unit": "kg"}})
        point["body"]["effective_time_frame"] = {
            "date_time": (now - timedelta(days=3 - d)).isoformat()
        }
        points.append(point)
    assert _upload(region, points).status_code == 200
    query = f"DetectedIssue?patient=Patient/{a.patient_id}&status=preliminary"
    issues = _until(lambda: _search(region, query))
    codes = {c["code"] for i in issues for c in i["code"]["coding"]}
    assert "hf-weight-gain-3d" in codes


def _search(region: Region, query: str) -> list[dict[str, Any]]:
    r = region.node.get(f"/fhir/{query}", headers=region.doctor)
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", [])]


def _until(fetch: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
