"""The risk-model gate (node/care/model_gate.py, pure) and what it does in the care worker on a
real store: a gated-out model's score is stored labelled not for clinical use and raises no
alert; an admitted model's score above the rule's threshold does."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from federated.scoring import MODEL_SYSTEM as FEDERATED_MODEL_SYSTEM
from node.care.model_gate import (
    LABEL_SYSTEM,
    MODEL_SYSTEM,
    NOT_FOR_CLINICAL_USE,
    GateVerdict,
    ModelFloor,
    gate,
    is_labelled,
    label,
    model_of,
)
from node.care.worker import CareWorker, load_into_store
from node.settings import CareSettings

from .fixtures import at, definitions

FLOOR = ModelFloor(0.70, 100)


def card(auroc: object, events: object) -> dict:
    return {"evaluation": {"auroc": auroc, "events": events, "brier": 0.2}}


# --- the pure gate ------------------------------------------------------------------------------


def test_the_node_defaults_are_the_cited_floor():
    care = CareSettings()
    assert (care.model_min_auroc, care.model_min_events) == (0.70, 100)
    assert care.model_registry_url is None  # no registry: every model is gated out


@pytest.mark.parametrize(("field", "value"), [("model_min_auroc", 0.69), ("model_min_events", 99)])
def test_a_node_may_raise_the_floor_but_never_lower_it(field: str, value: float) -> None:
    with pytest.raises(ValidationError, match=field):
        CareSettings(**{field: value})
    stricter = CareSettings(model_min_auroc=0.80, model_min_events=200)
    assert (stricter.model_min_auroc, stricter.model_min_events) == (0.80, 200)


def test_the_model_system_is_the_one_the_federated_scorer_writes():
    assert MODEL_SYSTEM == FEDERATED_MODEL_SYSTEM


def test_the_demo_model_with_auroc_031_is_not_for_clinical_use_and_says_why():
    v = gate("m1", card(0.31, 240), FLOOR)
    assert v == GateVerdict("m1", False, v.reason)
    assert "AUROC 0.31 is below the floor of 0.70" in v.reason
    assert v.reason.startswith("not for clinical use")


def test_at_the_floor_on_both_counts_the_model_is_admitted():
    v = gate("m1", card(0.70, 100), FLOOR)
    assert v.clinical_use, v.reason
    assert "0.70" in v.reason and "100 outcome events" in v.reason


def test_too_few_events_is_not_for_clinical_use_however_good_the_auroc():
    v = gate("m1", card(0.95, 90), FLOOR)
    assert not v.clinical_use
    assert "90 outcome events, fewer than the 100 required" in v.reason


@pytest.mark.parametrize(
    ("the_card", "why"),
    [
        (None, "no model card"),
        ({}, "no federated evaluation"),
        ({"evaluation": None}, "no federated evaluation"),
        (card(None, 240), "no federated AUROC"),
        (card(math.nan, 240), "no federated AUROC"),
        (card(True, 240), "no federated AUROC"),
        (card("0.9", 240), "no federated AUROC"),
        ({"evaluation": {"auroc": 0.9}}, "no count of outcome events"),
        (card(0.9, None), "no count of outcome events"),
    ],
)
def test_a_card_that_does_not_say_is_not_for_clinical_use(the_card, why):
    v = gate("m1", the_card, FLOOR)
    assert not v.clinical_use
    assert why in v.reason


@settings(max_examples=200, deadline=None)
@given(
    auroc=st.floats(0.0, 1.0),
    events=st.integers(0, 10_000),
    floor_auroc=st.floats(0.5, 1.0),
    floor_events=st.integers(1, 1_000),
)
def test_admitted_exactly_when_both_floors_are_met(auroc, events, floor_auroc, floor_events):
    v = gate("m", card(auroc, events), ModelFloor(floor_auroc, floor_events))
    assert v.clinical_use == (auroc >= floor_auroc and events >= floor_events)


def _assessment(model: str, p: float, pid: str = "p1") -> dict:
    return {
        "resourceType": "RiskAssessment",
        "status": "final",
        "subject": {"reference": f"Patient/{pid}"},
        "occurrenceDateTime": at().isoformat(),
        "method": {"coding": [{"system": MODEL_SYSTEM, "code": model}]},
        "prediction": [{"probabilityDecimal": p}],
    }


def test_label_tags_and_explains_once_and_leaves_the_input_alone():
    ra = {**_assessment("m1", 0.5), "meta": {"tag": [{"system": "x", "code": "y"}]}}
    verdict = gate("m1", card(0.31, 240), FLOOR)
    once = label(ra, verdict)
    assert "meta" in ra and len(ra["meta"]["tag"]) == 1 and "note" not in ra
    assert is_labelled(once) and not is_labelled(ra)
    assert {"system": "x", "code": "y"} in once["meta"]["tag"]
    twice = label(once, verdict)
    assert [t["code"] for t in twice["meta"]["tag"] if t["system"] == LABEL_SYSTEM] == [
        NOT_FOR_CLINICAL_USE
    ]
    assert "AUROC 0.31" in once["note"][0]["text"]
    assert model_of(ra) == "m1" and model_of({"resourceType": "Observation"}) is None


# --- in the worker, on a real store -------------------------------------------------------------


CARDS = {"weak": card(0.31, 240), "good": card(0.78, 240)}


def test_a_gated_out_models_score_is_labelled_and_silent_an_admitted_ones_alerts(store):
    asked: list[str] = []

    def registry_gate(model_id: str) -> GateVerdict:
        asked.append(model_id)
        return gate(model_id, CARDS.get(model_id), FLOOR)

    worker = CareWorker(store, definitions(), clock=lambda: at(0, 1), model_gate=registry_gate)
    load_into_store(store, definitions())
    worker.responsible = worker._ensure_practitioner("care-lead")
    pid = store.create({"resourceType": "Patient"}).resource["id"]
    condition = {
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"code": "active"}]},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "I50.9"}]},
        "subject": {"reference": f"Patient/{pid}"},
    }
    cond = store.create(condition).resource
    assert worker.enrol(cond, at(0)) == ["heart-failure"]

    def alerts() -> list[dict]:
        return store.search("DetectedIssue", [("patient", f"Patient/{pid}")]).resources

    weak = store.create(_assessment("weak", 0.62, pid)).resource
    assert worker.evaluate_patient(pid, [weak], at(0, 1)) == 0
    assert alerts() == []
    stored = store.read("RiskAssessment", weak["id"])
    assert is_labelled(stored) and stored["meta"]["versionId"] == "2"
    assert "AUROC 0.31 is below the floor" in stored["note"][-1]["text"]
    assert stored["prediction"] == weak["prediction"]  # the score itself is kept

    good = store.create(_assessment("good", 0.62, pid)).resource
    assert worker.evaluate_patient(pid, [good], at(0, 1)) == 1
    [issue] = alerts()
    assert issue["code"]["coding"][0]["code"] == "readmission-model-high"
    assert issue["evidence"][0]["detail"][0]["reference"] == f"RiskAssessment/{good['id']}"
    assert not is_labelled(store.read("RiskAssessment", good["id"]))
    assert asked == ["weak", "good"]
