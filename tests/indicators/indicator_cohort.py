"""A fixed cohort of four patients with hand-computed indicator values (see EXPECTED).

Period 2026-01-01 – 2026-07-01, as-of 2026-08-15. P1–P3 consent to HQUALIMP; P4 does not
(and would change every count if it were counted).

P1 (female, 76 → 75+; HF and hypertension):
  stays 01-10→01-15 (5 d), 02-05→02-08 (3 d), 04-01→04-03 (2 d): the first is followed by an
  admission 21 days later, the second by one 52 days later; the cap of 2 drops the third.
  readmission all 1/2, HF 1/2; LOS 5+3 over 2.
  BP 150/95 (05-01), 130/80 (06-10), 134/84 (06-14): last 7 days mean 132/82 → controlled.
  hypertension CarePlan; follow-up Tasks due 03-01 completed, 05-01 requested, 06-01 cancelled
  (not counted), 06-15 completed → 2/3. Urgent alerts: acknowledged 1 h before its deadline,
  another 1 h after → 1/2. Enrolment: hypertension (plan) 1, heart failure (no plan) 0.
P2 (male, 55 → 45-64; COPD and type 2 diabetes, no hypertension):
  stays 03-01→03-11 (10 d), 03-20→03-22 (2 d), 06-25→07-02 (discharged after the period):
  readmission all 1/2, COPD 1/2; LOS 10+2 over 2. HbA1c 8.1 (02-01), 6.8 (05-20) → controlled.
  A BP of 160/100 does not count (no hypertension). Diabetes CarePlan; enrolment: diabetes 1,
  COPD 0.
P3 (female, 16 → 0-17; hypertension): BP 140/90 → not controlled 0/1; an HbA1c of 7.5 without
  diabetes does not count; enrolment hypertension 0/1.
P4 (male, 80; no consent): HF, two stays with a readmission, alerts — never counted.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from federated.indicators import Period

PERIOD = Period(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 7, 1, tzinfo=UTC))
AS_OF = datetime(2026, 8, 15, tzinfo=UTC)
ICD10 = "http://hl7.org/fhir/sid/icd-10"
LOINC = "http://loinc.org"
CARE = "https://ipjms.example.org/fhir"

# (numerator, denominator) of the "all" cell, hand-computed from the docstring above
EXPECTED = {
    "readmission-30d-all": (2, 4),
    "readmission-30d-hf": (1, 2),
    "readmission-30d-copd": (1, 2),
    "length-of-stay-mean": (20, 4),
    "htn-control": (1, 2),
    "dm-control": (1, 1),
    "follow-up-completion": (2, 3),
    "urgent-alerts-acknowledged": (1, 2),
    "pathway-enrolment": (2, 5),
}
# selected strata cells: (indicator, dimension, value) → (numerator, denominator)
EXPECTED_STRATA = {
    ("readmission-30d-all", "sex", "female"): (1, 2),
    ("readmission-30d-all", "sex", "male"): (1, 2),
    ("readmission-30d-all", "age_band", "75+"): (1, 2),
    ("readmission-30d-all", "age_band", "45-64"): (1, 2),
    ("readmission-30d-all", "age_band", "65-74"): (0, 0),
    ("htn-control", "age_band", "0-17"): (0, 1),
    ("htn-control", "age_band", "75+"): (1, 1),
    ("pathway-enrolment", "pathway", "hypertension"): (1, 2),
    ("pathway-enrolment", "pathway", "type-2-diabetes"): (1, 1),
    ("pathway-enrolment", "pathway", "copd"): (0, 1),
    ("pathway-enrolment", "pathway", "heart-failure"): (0, 1),
    ("follow-up-completion", "pathway", "hypertension"): (2, 3),
    ("urgent-alerts-acknowledged", "pathway", "hypertension"): (1, 2),
    ("length-of-stay-mean", "sex", "male"): (12, 2),
}


def _patient(pid: str, gender: str, born: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "gender": gender, "birthDate": born}


def _condition(pid: str, code: str, onset: str = "2020-01-01") -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": f"{pid}-{code}",
        "clinicalStatus": {"coding": [{"code": "active"}]},
        "code": {"coding": [{"system": ICD10, "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
        "onsetDateTime": onset,
    }


def _stay(pid: str, n: int, start: str, end: str) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": f"{pid}-e{n}",
        "status": "finished",
        "class": {"code": "IMP"},
        "subject": {"reference": f"Patient/{pid}"},
        "period": {"start": f"{start}T09:00:00Z", "end": f"{end}T11:00:00Z"},
    }


def _bp(pid: str, n: int, at: str, sys_: int, dia: int) -> dict[str, Any]:
    def comp(code: str, v: int) -> dict[str, Any]:
        return {
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "valueQuantity": {"value": v, "unit": "mm[Hg]", "code": "mm[Hg]"},
        }

    return {
        "resourceType": "Observation",
        "id": f"{pid}-bp{n}",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": f"{at}T08:00:00Z",
        "component": [comp("8480-6", sys_), comp("8462-4", dia)],
    }


def _hba1c(pid: str, n: int, at: str, value: float) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"{pid}-a1c{n}",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "4548-4"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": f"{at}T08:00:00Z",
        "valueQuantity": {"value": value, "unit": "%", "code": "%"},
    }


def _plan(pid: str, key: str) -> dict[str, Any]:
    return {
        "resourceType": "CarePlan",
        "id": f"{pid}-cp-{key}",
        "status": "active",
        "intent": "plan",
        "identifier": [{"system": f"{CARE}/sid/care-plan", "value": f"{key}/{pid}"}],
        "instantiatesCanonical": [f"{CARE}/PlanDefinition/{key}|1.0.0"],
        "subject": {"reference": f"Patient/{pid}"},
        "created": "2026-01-02T00:00:00Z",
    }


def _task(pid: str, n: int, plan: str, due: str, status: str) -> dict[str, Any]:
    return {
        "resourceType": "Task",
        "id": f"{pid}-t{n}",
        "status": status,
        "intent": "plan",
        "for": {"reference": f"Patient/{pid}"},
        "basedOn": [{"reference": f"CarePlan/{plan}"}],
        "restriction": {"period": {"end": f"{due}T00:00:00Z"}},
    }


def _alert(pid: str, n: int, at: str, ack_by: str, acked: str | None) -> dict[str, Any]:
    issue: dict[str, Any] = {
        "resourceType": "DetectedIssue",
        "id": f"{pid}-a{n}",
        "status": "final" if acked else "preliminary",
        "severity": "high",
        "patient": {"reference": f"Patient/{pid}"},
        "identifiedDateTime": at,
        "reference": f"{CARE}/PlanDefinition/hypertension",
        "extension": [
            {
                "url": f"{CARE}/StructureDefinition/care-alert-acknowledge-by",
                "valueDateTime": ack_by,
            }
        ],
    }
    if acked:
        issue["mitigation"] = [
            {
                "action": {
                    "coding": [
                        {"system": f"{CARE}/CodeSystem/care-alert-action", "code": "acknowledged"}
                    ],
                    "text": "called the patient",
                },
                "date": acked,
            }
        ]
    return issue


def cohort() -> list[dict[str, Any]]:
    """``[{"consents": [...], "resources": [...]}, …]`` — the ``json`` source's format."""
    p1 = [
        _patient("p1", "female", "1950-03-01"),
        _condition("p1", "I50"),
        _condition("p1", "I10"),
        _stay("p1", 1, "2026-01-10", "2026-01-15"),
        _stay("p1", 2, "2026-02-05", "2026-02-08"),
        _stay("p1", 3, "2026-04-01", "2026-04-03"),
        _bp("p1", 1, "2026-05-01", 150, 95),
        _bp("p1", 2, "2026-06-10", 130, 80),
        _bp("p1", 3, "2026-06-14", 134, 84),
        _plan("p1", "hypertension"),
        _task("p1", 1, "p1-cp-hypertension", "2026-03-01", "completed"),
        _task("p1", 2, "p1-cp-hypertension", "2026-05-01", "requested"),
        _task("p1", 3, "p1-cp-hypertension", "2026-06-01", "cancelled"),
        _task("p1", 4, "p1-cp-hypertension", "2026-06-15", "completed"),
        _alert("p1", 1, "2026-05-01T10:00:00Z", "2026-05-01T12:00:00Z", "2026-05-01T11:00:00Z"),
        _alert("p1", 2, "2026-06-01T10:00:00Z", "2026-06-01T12:00:00Z", "2026-06-01T13:00:00Z"),
    ]
    p2 = [
        _patient("p2", "male", "1970-07-01"),
        _condition("p2", "J44"),
        _condition("p2", "E11"),
        _stay("p2", 1, "2026-03-01", "2026-03-11"),
        _stay("p2", 2, "2026-03-20", "2026-03-22"),
        _stay("p2", 3, "2026-06-25", "2026-07-02"),
        _hba1c("p2", 1, "2026-02-01", 8.1),
        _hba1c("p2", 2, "2026-05-20", 6.8),
        _bp("p2", 1, "2026-04-01", 160, 100),
        _plan("p2", "type-2-diabetes"),
    ]
    p3 = [
        _patient("p3", "female", "2010-01-01"),
        _condition("p3", "I10"),
        _bp("p3", 1, "2026-03-01", 140, 90),
        _hba1c("p3", 1, "2026-03-01", 7.5),
    ]
    p4 = [
        _patient("p4", "male", "1946-01-01"),
        _condition("p4", "I50"),
        _condition("p4", "I10"),
        _stay("p4", 1, "2026-02-01", "2026-02-10"),
        _stay("p4", 2, "2026-02-15", "2026-02-20"),
        _bp("p4", 1, "2026-03-01", 120, 70),
        _plan("p4", "heart-failure"),
        _alert("p4", 1, "2026-05-01T10:00:00Z", "2026-05-01T12:00:00Z", "2026-05-01T10:30:00Z"),
    ]
    return [
        {"consents": ["HQUALIMP", "HRESCH"], "resources": p1},
        {"consents": ["HQUALIMP"], "resources": p2},
        {"consents": ["HQUALIMP"], "resources": p3},
        {"consents": ["HRESCH"], "resources": p4},  # research yes, quality improvement no
    ]


def consented() -> list[list[dict[str, Any]]]:
    return [r["resources"] for r in cohort() if "HQUALIMP" in r["consents"]]
