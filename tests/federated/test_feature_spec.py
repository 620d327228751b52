"""readmission-30d@1 on hand-made FHIR resources (pure, no server)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from federated.feature_spec import FEATURE_NAMES, SPEC_ID, extract_samples

AS_OF = datetime(2026, 1, 1, tzinfo=UTC)
F = {name: i for i, name in enumerate(FEATURE_NAMES)}


def patient(gender: str = "female", birth: str = "1950-06-15") -> dict:
    return {"resourceType": "Patient", "id": "p1", "gender": gender, "birthDate": birth}


def stay(eid: str, start: str, end: str | None, cls: str = "IMP") -> dict:
    period = {"start": start} | ({"end": end} if end else {})
    return {
        "resourceType": "Encounter",
        "id": eid,
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": cls},
        "period": period,
    }


def obs(code: str, value: float, at: str) -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "effectiveDateTime": at,
        "valueQuantity": {"value": value},
    }


def cond(system: str, code: str, onset: str, status: str = "active") -> dict:
    return {
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"code": status}]},
        "code": {"coding": [{"system": system, "code": code}]},
        "onsetDateTime": onset,
    }


def test_spec_is_versioned() -> None:
    assert SPEC_ID == "readmission-30d@1"
    assert len(FEATURE_NAMES) == len(set(FEATURE_NAMES)) == 26


def test_one_sample_per_discharge_with_30_day_label() -> None:
    res = [
        patient(),
        stay("e1", "2025-03-01T10:00:00Z", "2025-03-05T12:00:00Z"),
        stay("e2", "2025-03-20T08:00:00Z", "2025-03-22T12:00:00Z"),  # 15 days later: readmission
        stay("e3", "2025-06-01T08:00:00Z", "2025-06-03T12:00:00Z"),  # 71 days after e2: no
        stay("amb", "2025-03-10T08:00:00Z", "2025-03-10T09:00:00Z", cls="AMB"),  # not inpatient
    ]
    samples = extract_samples(res, as_of=AS_OF)
    assert [(s.encounter_id, s.label) for s in samples] == [("e1", 1), ("e2", 0), ("e3", 0)]
    e1 = samples[0]
    assert e1.features[F["prior_admissions_12m"]] == 0
    assert samples[1].features[F["prior_admissions_12m"]] == 1  # e1 within 365 days
    assert math.isclose(e1.features[F["log_length_of_stay"]], math.log(4 + 2 / 24))
    assert e1.features[F["sex_female"]] == 1.0
    assert math.isclose(e1.features[F["age_per_decade_over_65"]], (74 - 65) / 10)


def test_exactly_30_days_counts_and_31_does_not() -> None:
    base = [patient(), stay("a", "2025-01-01T00:00:00Z", "2025-01-02T00:00:00Z")]
    within = extract_samples(
        base + [stay("b", "2025-02-01T00:00:00Z", "2025-02-02T00:00:00Z")], as_of=AS_OF
    )
    after = extract_samples(
        base + [stay("b", "2025-02-01T00:00:01Z", "2025-02-02T00:00:00Z")], as_of=AS_OF
    )
    assert within[0].label == 1
    assert after[0].label == 0


def test_censoring_near_as_of_and_unfinished_stays() -> None:
    res = [
        patient(),
        stay("late", "2025-12-10T00:00:00Z", "2025-12-12T00:00:00Z"),  # < 30 days before as_of
        stay("open", "2025-12-20T00:00:00Z", None),
    ]
    assert extract_samples(res, as_of=AS_OF) == []
    scored = extract_samples(res, as_of=AS_OF, include_unlabelled=True)
    assert [(s.encounter_id, s.label) for s in scored] == [("late", None)]


def test_latest_measurement_before_discharge_and_missing_indicators() -> None:
    res = [
        patient(),
        stay("e1", "2025-03-01T10:00:00Z", "2025-03-05T12:00:00Z"),
        obs("42637-9", 400, "2025-03-01T11:00:00Z"),
        obs("42637-9", 200, "2025-03-05T10:00:00Z"),  # latest before discharge
        obs("42637-9", 9000, "2025-03-06T10:00:00Z"),  # after discharge: ignored
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
            "effectiveDateTime": "2025-03-04T10:00:00Z",
            "component": [
                {
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                    "valueQuantity": {"value": 150},
                }
            ],
        },
    ]
    (s,) = extract_samples(res, as_of=AS_OF)
    assert math.isclose(s.features[F["bnp_scaled"]], math.log(2.0))
    assert s.features[F["bnp_missing"]] == 0.0
    assert math.isclose(s.features[F["systolic_scaled"]], 1.0)
    assert s.features[F["egfr_missing"]] == 1.0 and s.features[F["egfr_scaled"]] == 0.0
    assert s.features[F["hba1c_missing"]] == 1.0


def test_conditions_by_snomed_or_icd10_active_at_discharge() -> None:
    res = [
        patient(gender="male"),
        stay("e1", "2025-03-01T10:00:00Z", "2025-03-05T12:00:00Z"),
        cond("http://snomed.info/sct", "84114007", "2020-01-01"),  # heart failure
        cond("http://hl7.org/fhir/sid/icd-10", "N18.3", "2021-01-01"),  # CKD by ICD-10
        cond("http://snomed.info/sct", "13645005", "2025-04-01"),  # COPD after discharge
        cond("http://snomed.info/sct", "38341003", "2010-01-01", status="resolved"),  # resolved
        {"resourceType": "MedicationRequest", "status": "active", "authoredOn": "2025-01-01"},
        {"resourceType": "MedicationRequest", "status": "stopped", "authoredOn": "2025-01-01"},
    ]
    (s,) = extract_samples(res, as_of=AS_OF)
    assert s.features[F["has_heart_failure"]] == 1.0
    assert s.features[F["has_ckd"]] == 1.0
    assert s.features[F["has_copd"]] == 0.0
    assert s.features[F["has_hypertension"]] == 0.0
    assert s.features[F["sex_female"]] == 0.0
    assert math.isclose(s.features[F["active_medications_per_5"]], 0.2)


def test_no_patient_no_samples() -> None:
    assert (
        extract_samples([stay("e1", "2025-03-01T10:00:00Z", "2025-03-05T12:00:00Z")], as_of=AS_OF)
        == []
    )
