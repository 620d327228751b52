"""Turn a synthetic person and their journey into one FHIR R4 transaction Bundle."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from node.feeds.synthetic.journey import Journey, Measurement, Visit
from node.feeds.synthetic.person import Person
from node.feeds.terminology import (
    ATC,
    CONDITIONS,
    ICD10,
    LOINC,
    LOINC_CODES,
    MEDICATIONS,
    OBSERVATION_CATEGORY,
    RXNORM,
    SNOMED,
    UCUM,
)
from node.feeds.transaction_bundle import TransactionBuilder
from node.identity import NATIONAL_ID_SYSTEM

__all__ = ["RECORD_ID_SYSTEM", "MRN_SYSTEM", "person_bundle"]

# Business identifiers of the generated records (make re-seeding idempotent via ifNoneExist).
RECORD_ID_SYSTEM = "https://ipjms.example.org/fhir/sid/synthetic-record"
MRN_SYSTEM = "https://ipjms.example.org/fhir/sid/synthetic-mrn"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
ENCOUNTER_TYPES = {
    "AMB": ("185349003", "Encounter for check up (procedure)", "ambulatory"),
    "IMP": ("32485007", "Hospital admission (procedure)", "inpatient encounter"),
}


def _dt(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _medications(person: Person) -> list[str]:
    c = person.conditions
    meds: list[str] = []
    if c & {"hypertension", "heart_failure", "ckd"}:
        meds.append("lisinopril")
    if "hypertension" in c and person.physiology.systolic > 150:
        meds.append("amlodipine")
    if "diabetes" in c and person.physiology.egfr >= 30:
        meds.append("metformin")
    if "heart_failure" in c:
        meds += ["furosemide", "bisoprolol"]
    if "copd" in c:
        meds.append("tiotropium")
    if c & {"diabetes", "ckd"}:
        meds.append("atorvastatin")
    return meds


class _Records:
    def __init__(self, builder: TransactionBuilder, record_prefix: str, patient_ref: str) -> None:
        self.b = builder
        self.prefix = record_prefix
        self.patient_ref = patient_ref

    def create(self, key: str, resource: dict[str, Any]) -> str:
        value = f"{self.prefix}/{key}"
        resource["identifier"] = [{"system": RECORD_ID_SYSTEM, "value": value}]
        return self.b.create(key, resource, identifier=(RECORD_ID_SYSTEM, value))

    def condition(self, key: str, onset: date) -> None:
        code = CONDITIONS[key]
        self.create(
            f"cond-{key}",
            {
                "resourceType": "Condition",
                "clinicalStatus": {"coding": [{"system": CONDITION_CLINICAL, "code": "active"}]},
                "verificationStatus": {
                    "coding": [{"system": CONDITION_VERIFICATION, "code": "confirmed"}]
                },
                "category": [
                    {"coding": [{"system": CONDITION_CATEGORY, "code": "problem-list-item"}]}
                ],
                "code": {
                    "coding": [
                        {"system": SNOMED, "code": code.snomed, "display": code.snomed_display},
                        {"system": ICD10, "code": code.icd10, "display": code.icd10_display},
                    ],
                    "text": code.snomed_display,
                },
                "subject": {"reference": self.patient_ref},
                "onsetDateTime": onset.isoformat(),
                "recordedDate": onset.isoformat(),
            },
        )

    def encounter(self, n: int, visit: Visit) -> str:
        code, display, class_display = ENCOUNTER_TYPES[visit.kind]
        resource: dict[str, Any] = {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"system": ACT_CODE, "code": visit.kind, "display": class_display},
            "type": [{"coding": [{"system": SNOMED, "code": code, "display": display}]}],
            "subject": {"reference": self.patient_ref},
            "period": {"start": _dt(visit.start), "end": _dt(visit.end)},
        }
        if visit.reason:
            cond = CONDITIONS[visit.reason]
            resource["reasonCode"] = [
                {
                    "coding": [
                        {"system": SNOMED, "code": cond.snomed, "display": cond.snomed_display}
                    ]
                }
            ]
        if visit.kind == "IMP":
            resource["hospitalization"] = {
                "dischargeDisposition": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/discharge-disposition",
                            "code": "home",
                        }
                    ]
                }
            }
        return self.create(f"enc-{n}", resource)

    def observation(self, key: str, m: Measurement, encounter_ref: str) -> None:
        code = LOINC_CODES[m.loinc]
        resource: dict[str, Any] = {
            "resourceType": "Observation",
            "status": "final",
            "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": code.category}]}],
            "code": {"coding": [{"system": LOINC, "code": code.code, "display": code.display}]},
            "subject": {"reference": self.patient_ref},
            "encounter": {"reference": encounter_ref},
            "effectiveDateTime": _dt(m.at),
        }
        if isinstance(m.value, tuple):
            resource["component"] = [
                _component("8480-6", m.value[0]),
                _component("8462-4", m.value[1]),
            ]
        else:
            resource["valueQuantity"] = _quantity(m.value, code.unit)
        self.create(key, resource)

    def medication(self, key: str, authored: datetime) -> None:
        med = MEDICATIONS[key]
        self.create(
            f"med-{key}",
            {
                "resourceType": "MedicationRequest",
                "status": "active",
                "intent": "order",
                "medicationCodeableConcept": {
                    "coding": [
                        {"system": RXNORM, "code": med.rxnorm, "display": med.display},
                        {"system": ATC, "code": med.atc, "display": med.display},
                    ],
                    "text": med.display,
                },
                "subject": {"reference": self.patient_ref},
                "authoredOn": _dt(authored),
                "dosageInstruction": [{"text": med.dose_text}],
            },
        )


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def _component(loinc: str, value: float) -> dict[str, Any]:
    code = LOINC_CODES[loinc]
    return {
        "code": {"coding": [{"system": LOINC, "code": code.code, "display": code.display}]},
        "valueQuantity": _quantity(value, code.unit),
    }


def patient_resource(person: Person, mrn: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [
            {
                "use": "official",
                "type": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "NI"}
                    ]
                },
                "system": NATIONAL_ID_SYSTEM,
                "value": person.national_id,
            },
            {
                "use": "usual",
                "type": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}
                    ]
                },
                "system": MRN_SYSTEM,
                "value": mrn,
            },
        ],
        "name": [{"use": "official", "family": person.family, "given": [person.given]}],
        "gender": person.gender,
        "birthDate": person.birth_date.isoformat(),
        "address": [person.address],
    }


def person_bundle(person: Person, journey: Journey, record_prefix: str) -> dict[str, Any]:
    """One transaction Bundle: the Patient and every record of their journey at this site."""
    builder = TransactionBuilder(record_prefix)
    patient_ref = builder.create(
        "patient",
        patient_resource(person, record_prefix),
        identifier=(NATIONAL_ID_SYSTEM, person.national_id),
    )
    records = _Records(builder, record_prefix, patient_ref)
    for key in sorted(person.conditions):
        records.condition(key, person.condition_onsets[key])
    first_visit = journey.visits[0].start if journey.visits else None
    for n, visit in enumerate(journey.visits):
        encounter_ref = records.encounter(n, visit)
        for k, measurement in enumerate(visit.measurements):
            records.observation(f"obs-{n}-{k}", measurement, encounter_ref)
    if first_visit is not None:
        for key in _medications(person):
            records.medication(key, first_visit)
    return builder.bundle()
