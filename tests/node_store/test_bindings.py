"""Required terminology bindings (node.store.bindings) and their hook in validate_resource."""

from __future__ import annotations

from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from hypothesis import given
from hypothesis import strategies as st

from node.store.bindings import (
    REQUIRED_CODE_BINDINGS,
    REQUIRED_CONCEPT_BINDINGS,
    binding_violations,
)
from node.store.search_params import SUPPORTED_SEARCH_PARAMS
from node.store.validation import validate_resource
from servicekit.outcome import BadRequest

CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
SNOMED = "http://snomed.info/sct"

CODE_ELEMENTS = [
    (rtype, element, vs)
    for rtype, elements in REQUIRED_CODE_BINDINGS.items()
    for element, vs in elements.items()
]


def _observation(status: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": status, "code": {"text": "x"}}


def _condition(*codings: dict[str, str]) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "clinicalStatus": {"coding": list(codings)},
        "subject": {"reference": "Patient/p1"},
    }


def test_bad_status_refused_naming_path_and_allowed_codes() -> None:
    with pytest.raises(BadRequest) as caught:
        validate_resource(_observation("bogus"))
    err = caught.value
    assert err.status == 400 and err.code == "code-invalid"
    assert err.expression == ["Observation.status"]
    assert "'bogus'" in err.diagnostics
    assert "http://hl7.org/fhir/ValueSet/observation-status" in err.diagnostics
    allowed = REQUIRED_CODE_BINDINGS["Observation"]["status"].codes
    assert len(allowed) == 8 and all(code in err.diagnostics for code in allowed)
    outcome = err.outcome()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == ["Observation.status"]


def test_good_status_passes() -> None:
    assert validate_resource(_observation("final")) == "Observation"
    assert validate_resource(_observation("entered-in-error")) == "Observation"


def test_codes_are_case_sensitive() -> None:
    with pytest.raises(BadRequest, match="Observation.status"):
        validate_resource(_observation("Final"))


def test_repeating_code_element_names_the_bad_item() -> None:
    allergy = {
        "resourceType": "AllergyIntolerance",
        "patient": {"reference": "Patient/p1"},
        "category": ["food", "pollen"],
        "criticality": "extreme",
    }
    with pytest.raises(BadRequest) as caught:
        validate_resource(allergy)
    assert caught.value.expression == [
        "AllergyIntolerance.category[1]",
        "AllergyIntolerance.criticality",
    ]
    assert "unable-to-assess" in caught.value.diagnostics


def test_wrong_code_in_the_bound_coding_system_refused() -> None:
    bad = _condition({"system": CLINICAL, "code": "cured"})
    with pytest.raises(BadRequest) as caught:
        validate_resource(bad)
    assert caught.value.expression == ["Condition.clinicalStatus.coding[0].code"]
    assert "'cured'" in caught.value.diagnostics and "remission" in caught.value.diagnostics


def test_right_code_in_the_bound_system_passes() -> None:
    assert validate_resource(_condition({"system": CLINICAL, "code": "resolved"})) == "Condition"


def test_codes_of_other_systems_left_alone() -> None:
    translation = {"system": SNOMED, "code": "55561003"}
    assert validate_resource(_condition(translation)) == "Condition"
    assert validate_resource(_condition({"code": "whatever"})) == "Condition"
    mixed = _condition(translation, {"system": CLINICAL, "code": "cured"})
    assert [v.path for v in binding_violations("Condition", mixed)] == [
        "Condition.clinicalStatus.coding[1].code"
    ]


def test_allergy_verification_status_checked_per_coding() -> None:
    allergy = {
        "resourceType": "AllergyIntolerance",
        "patient": {"reference": "Patient/p1"},
        "verificationStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
                    "code": "provisional",  # a Condition verification code, not an allergy one
                }
            ]
        },
    }
    with pytest.raises(BadRequest, match="AllergyIntolerance.verificationStatus"):
        validate_resource(allergy)


@pytest.mark.parametrize(("rtype", "element", "vs"), CODE_ELEMENTS)
def test_table_names_real_code_elements_of_stored_types(rtype: str, element: str, vs: Any) -> None:
    assert rtype in SUPPORTED_SEARCH_PARAMS
    field = get_fhir_model_class(rtype).model_fields[element]
    assert "Code()" in repr(field.annotation)
    # Every code the model's (possibly truncated) short description names is in the table.
    named = (field.json_schema_extra or {}).get("enum_values") or []
    assert set(named) - {"+"} <= vs.members


def test_concept_table_names_codeable_concepts_of_stored_types() -> None:
    for rtype, elements in REQUIRED_CONCEPT_BINDINGS.items():
        assert rtype in SUPPORTED_SEARCH_PARAMS
        fields = get_fhir_model_class(rtype).model_fields
        for element in elements:
            assert "CodeableConcept" in repr(fields[element].annotation)


@given(st.data())
def test_every_listed_code_passes_and_anything_else_fails(data: st.DataObject) -> None:
    rtype, element, vs = data.draw(st.sampled_from(CODE_ELEMENTS))
    good = data.draw(st.sampled_from(vs.codes))
    assert binding_violations(rtype, {element: good}) == []
    bad = data.draw(st.text(min_size=1).filter(lambda s: s not in vs.members))
    found = binding_violations(rtype, {element: bad})
    assert [v.path for v in found] == [f"{rtype}.{element}"]
    assert vs.url in found[0].message


def test_types_without_bindings_and_absent_elements_pass() -> None:
    assert binding_violations("Organization", {"name": "x", "active": True}) == []
    assert binding_violations("Patient", {"name": [{"family": "Doe"}]}) == []
