"""Enrolment by Condition code, and the strict FHIRPath front end."""

from __future__ import annotations

import pytest

from node.care.enrolment import enrolling_pathways
from node.care.expressions import ExpressionError, compile_expression

from .fixtures import definitions

TERMINOLOGY = "http://terminology.hl7.org/CodeSystem"


def _condition(system, code, clinical="active", verification="confirmed"):
    return {
        "resourceType": "Condition",
        "clinicalStatus": {
            "coding": [{"system": f"{TERMINOLOGY}/condition-clinical", "code": clinical}]
        },
        "verificationStatus": {
            "coding": [{"system": f"{TERMINOLOGY}/condition-ver-status", "code": verification}]
        },
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": "Patient/p1"},
    }


@pytest.mark.parametrize(
    ("system", "code", "expected"),
    [
        ("http://hl7.org/fhir/sid/icd-10", "I50.9", ["heart-failure"]),
        ("http://hl7.org/fhir/sid/icd-10-cm", "I110", ["hypertension"]),
        ("http://hl7.org/fhir/sid/icd-10", "E11.65", ["type-2-diabetes"]),
        ("http://hl7.org/fhir/sid/icd-10", "J44.1", ["copd"]),
        ("http://snomed.info/sct", "84114007", ["heart-failure"]),
        ("http://snomed.info/sct", "38341003", ["hypertension"]),
        ("http://hl7.org/fhir/sid/icd-10", "I14", []),  # not a code; I10-I15 has no I14
        ("http://hl7.org/fhir/sid/icd-10", "E10.9", []),  # type 1 diabetes
        ("http://loinc.org", "I50", []),
    ],
)
def test_active_condition_codes_enrol(system, code, expected):
    got = [p.key for p in enrolling_pathways(_condition(system, code), definitions().pathways)]
    assert got == expected


def test_inactive_or_refuted_conditions_do_not_enrol():
    pathways = definitions().pathways
    icd = "http://hl7.org/fhir/sid/icd-10"
    assert enrolling_pathways(_condition(icd, "I50", clinical="resolved"), pathways) == []
    assert enrolling_pathways(_condition(icd, "I50", verification="refuted"), pathways) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Observation.value >>> (", "column"),
        ("a and", "column"),
        ("value.where(", "column"),
        ("value ) extra", "after the end"),
        ("value.frobnicate()", "unknown FHIRPath function frobnicate"),
        ("now() > @2020-01-01", "reads the clock"),
        ("", "empty"),
    ],
)
def test_unparseable_or_impure_fhirpath_is_refused(text, message):
    with pytest.raises(ExpressionError, match=message):
        compile_expression(text)
