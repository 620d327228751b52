"""$apply: PlanDefinition + patient (+ active MedicationRequests) → CarePlan, Goals, CareTeam,
follow-up ServiceRequests/Tasks; each step on its own, then the whole as a transaction Bundle."""

from __future__ import annotations

from fhir.resources.R4B.bundle import Bundle

from node.care.apply import apply_pathway, goals, process_action, select_actions
from node.care.revision import revise_plan

from .fixtures import at, definitions, medication_request, patient

DR = "Practitioner/dr-wang"


def _pathway(key):
    p = definitions().by_key(key)
    assert p is not None
    return p


def _ids(actions):
    return [a["id"] for a in actions]


def test_select_actions_honours_applicability_conditions():
    hf, htn = _pathway("heart-failure"), _pathway("hypertension")
    assert _ids(select_actions(htn, patient(), "controlled", [])) == [
        "home-bp-routine", "diet", "exercise", "follow-up-routine"
    ]  # fmt: skip
    assert _ids(select_actions(htn, patient(), "uncontrolled", [medication_request()])) == [
        "home-bp-intensive", "medication-reminders", "diet", "exercise", "follow-up-early"
    ]  # fmt: skip
    assert "follow-up-early" not in _ids(select_actions(hf, patient(), "unknown", []))


def test_goals_carry_targets_due_dates_and_the_citation():
    [goal] = goals(_pathway("hypertension"), "Patient/p1", DR, at())
    assert goal["lifecycleStatus"] == "active"
    assert [t["detailQuantity"]["value"] for t in goal["target"]] == [135, 85]
    assert goal["target"][0]["dueDate"] == "2027-03-01"
    assert "ESH" in goal["note"][0]["text"] and "2024" in goal["note"][0]["text"]


def test_process_action_home_measurement_is_a_scheduled_detail():
    hf = _pathway("heart-failure")
    action = next(a for a in hf.plan_definition["action"] if a["id"] == "daily-weight")
    result = process_action(action, hf, "Patient/p1", DR, [], at(), "urn:uuid:x")
    assert result.requests == []
    [activity] = result.activities
    detail = activity["detail"]
    assert detail["code"]["coding"][0]["code"] == "29463-7"
    assert detail["scheduledTiming"]["repeat"] == {"frequency": 1, "period": 1, "periodUnit": "d"}
    assert detail["performer"] == [{"reference": "Patient/p1"}]


def test_process_action_visit_is_a_service_request_and_task_with_due_date():
    hf = _pathway("heart-failure")
    action = next(a for a in hf.plan_definition["action"] if a["id"] == "follow-up-early")
    result = process_action(action, hf, "Patient/p1", DR, [], at(), "urn:uuid:cp")
    sr, task = result.requests
    assert (
        sr["resourceType"] == "ServiceRequest"
        and sr["occurrenceDateTime"] == "2026-12-08T08:00:00Z"
    )
    assert task["restriction"]["period"]["end"] == "2026-12-08T08:00:00Z"
    assert task["focus"]["reference"] == sr["_fullUrl"] and task["owner"]["reference"] == DR
    assert result.activities == [
        {"extension": result.activities[0]["extension"], "reference": {"reference": sr["_fullUrl"]}}
    ]


def test_medication_reminders_one_per_active_medication_request():
    hf = _pathway("heart-failure")
    action = next(a for a in hf.plan_definition["action"] if a["id"] == "medication-reminders")
    meds = [medication_request("m1", "furosemide"), medication_request("m2", "bisoprolol")]
    result = process_action(action, hf, "Patient/p1", DR, meds, at(), "urn:uuid:cp")
    products = [a["detail"]["productCodeableConcept"]["text"] for a in result.activities]
    assert products == ["furosemide", "bisoprolol"]
    assert all(a["detail"]["kind"] == "MedicationRequest" for a in result.activities)


def test_apply_pathway_gives_a_valid_transaction_with_careplan_goals_careteam():
    hf = _pathway("heart-failure")
    applied = apply_pathway(
        hf, patient(), DR, [medication_request()], at(), condition_ref="Condition/c1"
    )
    bundle = applied.transaction()
    Bundle.model_validate(bundle)
    types = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert types == ["CarePlan", "Goal", "CareTeam", "ServiceRequest", "Task"]
    plan = bundle["entry"][0]["resource"]
    assert plan["instantiatesCanonical"] == [hf.canonical]
    assert plan["status"] == "active" and plan["intent"] == "plan"
    assert (
        plan["subject"] == {"reference": "Patient/p1"}
        and plan["addresses"][0]["reference"] == "Condition/c1"
    )
    urls = {e["fullUrl"] for e in bundle["entry"]}
    assert plan["careTeam"][0]["reference"] in urls and plan["goal"][0]["reference"] in urls
    team = bundle["entry"][2]["resource"]
    assert team["participant"][0]["member"] == {"reference": DR}
    assert (
        apply_pathway(
            hf, patient(), DR, [medication_request()], at(), condition_ref="Condition/c1"
        ).transaction()
        == bundle
    )


def _stored(applied):
    """The applied plan as the store would hold it: ids for everything, references resolved."""
    plan = {k: v for k, v in applied.careplan.items() if k != "_fullUrl"} | {"id": "cp1"}
    requests = []
    names = {r["_fullUrl"]: f"{r['resourceType']}/{r['resourceType'][:2].lower()}{i}"
             for i, r in enumerate(applied.requests)}  # fmt: skip
    for r in applied.requests:
        body = {k: v for k, v in r.items() if k != "_fullUrl"} | {
            "id": names[r["_fullUrl"]].split("/")[1]
        }
        if "focus" in body:
            body["focus"] = {"reference": names[body["focus"]["reference"]]}
        requests.append(body)
    for a in plan["activity"]:
        if "reference" in a:
            a["reference"] = {"reference": names[a["reference"]["reference"]]}
    return plan, requests


def test_uncontrolled_patient_gets_a_new_careplan_version_with_earlier_follow_up_and_reason():
    htn = _pathway("hypertension")
    plan, requests = _stored(
        apply_pathway(htn, patient(), DR, [], at(), control_status="controlled")
    )
    routine_due = next(r for r in requests if r["resourceType"] == "Task")["restriction"]["period"][
        "end"
    ]
    rev = revise_plan(
        htn, patient(), plan, requests, "uncontrolled", "mean systolic 142", DR, [], at(5)
    )
    assert rev is not None
    assert rev.careplan["id"] == "cp1"
    kinds = [a["extension"][0]["valueId"] for a in rev.careplan["activity"]]
    assert kinds == ["home-bp-intensive", "diet", "exercise", "follow-up-early"]
    [new_task] = [r for r in rev.created if r["resourceType"] == "Task"]
    assert new_task["restriction"]["period"]["end"] == "2026-12-20T08:00:00Z" < routine_due
    assert {(r["resourceType"], r["status"]) for r in rev.cancelled} == {
        ("ServiceRequest", "revoked"), ("Task", "cancelled")
    }  # fmt: skip
    assert "controlled → uncontrolled" in rev.reason and "mean systolic 142" in rev.reason
    assert rev.careplan["note"][-1]["text"] == rev.reason
    Bundle.model_validate(rev.transaction())
    assert revise_plan(htn, patient(), rev.careplan, [], "uncontrolled", "x", DR, [], at(6)) is None


def test_improving_never_moves_a_pending_visit_later():
    htn = _pathway("hypertension")
    plan, requests = _stored(
        apply_pathway(htn, patient(), DR, [], at(), control_status="uncontrolled")
    )
    rev = revise_plan(htn, patient(), plan, requests, "controlled", "mean 128/79", DR, [], at(3))
    assert rev is not None
    assert rev.cancelled == ()  # the early visit (due in 2 weeks) stays
    assert "follow-up-early kept" in rev.reason
