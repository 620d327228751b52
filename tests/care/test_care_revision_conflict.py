"""A plan revision by the care worker never overwrites a doctor's concurrent edit: the worker's
PUT carries If-Match on the CarePlan version it read; when the doctor changed the plan in
between, it re-reads and revises the doctor's version (bounded retries). On a real store."""

from __future__ import annotations

from datetime import timedelta

from node.care import worker as worker_module
from node.care.revision import control_of
from node.care.worker import CareWorker, load_into_store
from node.store import FhirStore

from .fixtures import at, definitions, weight

DOCTOR_NOTE = "Dr Li: fluid restriction 1.5 L/day agreed with the patient"


def _enrolled(store: FhirStore) -> tuple[CareWorker, str, str]:
    worker = CareWorker(store, definitions(), clock=lambda: at(3, 1))
    load_into_store(store, definitions())
    worker.responsible = worker._ensure_practitioner("care-lead")
    pid = store.create({"resourceType": "Patient"}).resource["id"]
    condition = store.create({
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"code": "active"}]},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "I50.9"}]},
        "subject": {"reference": f"Patient/{pid}"},
    }).resource  # fmt: skip
    assert worker.enrol(condition, at(0)) == ["heart-failure"]
    [plan] = store.search("CarePlan", [("patient", f"Patient/{pid}")]).resources
    store.create(weight(70.0, at(0), patient=f"Patient/{pid}"))
    return worker, pid, plan["id"]


def _doctor_edits(store: FhirStore, plan_id: str, text: str, read=None) -> None:  # noqa: ANN001
    """The doctor's edit through the store's one write door, as the API's PUT makes it."""
    current = (read or store.read)("CarePlan", plan_id)
    current["note"] = [*current.get("note", []), {"text": text}]
    store.update("CarePlan", plan_id, current, if_match=f'W/"{current["meta"]["versionId"]}"')


def test_a_doctors_concurrent_edit_survives_the_workers_revision(store, monkeypatch):
    worker, pid, plan_id = _enrolled(store)
    made = worker._revisions

    def doctor_edits_meanwhile(changes, now):  # noqa: ANN001, ANN202
        out = made(changes, now)  # the worker has read version 1 and made its revision
        _doctor_edits(store, plan_id, DOCTOR_NOTE)  # version 2, before the worker writes
        return out

    monkeypatch.setattr(worker, "_revisions", doctor_edits_meanwhile)
    rising = store.create(weight(72.5, at(3), patient=f"Patient/{pid}")).resource
    worker.evaluate_patient(pid, [rising], at(3, 1))  # > 2 kg in 3 days: uncontrolled

    final = store.read("CarePlan", plan_id)
    assert final["meta"]["versionId"] == "3"  # the doctor's version 2, then the revision
    notes = [n["text"] for n in final["note"]]
    assert DOCTOR_NOTE in notes
    assert control_of(final) == "uncontrolled"
    assert sum(n.startswith("control status unknown → uncontrolled") for n in notes) == 1
    tasks = store.search("Task", [("based-on", f"CarePlan/{plan_id}"), ("status", "requested")])
    assert len(tasks.resources) == 1  # one early follow-up: the retry made no second one


def test_retries_are_bounded_and_never_overwrite(store, monkeypatch):
    worker, pid, plan_id = _enrolled(store)
    made = worker._revisions
    monkeypatch.setattr(worker_module, "REVISION_RETRIES", 2)
    edits = iter(range(100))
    real_read = store.read

    def doctor_always_first(rtype: str, rid: str):  # noqa: ANN202
        found = real_read(rtype, rid)
        if rtype == "CarePlan" and rid == plan_id:  # the worker re-reads: the doctor edits again
            _doctor_edits(store, plan_id, f"edit {next(edits)}", read=real_read)
        return found

    def doctor_edits_meanwhile(changes, now):  # noqa: ANN001, ANN202
        out = made(changes, now)
        _doctor_edits(store, plan_id, f"edit {next(edits)}")
        monkeypatch.setattr(store, "read", doctor_always_first)
        return out

    monkeypatch.setattr(worker, "_revisions", doctor_edits_meanwhile)
    rising = store.create(weight(72.5, at(3), patient=f"Patient/{pid}")).resource
    worker.evaluate_patient(pid, [rising], at(3, 1))  # gives up after 2 re-reads, no raise
    monkeypatch.undo()
    final = store.read("CarePlan", plan_id)
    assert [n["text"] for n in final["note"]] == ["edit 0", "edit 1", "edit 2"]
    assert control_of(final) != "uncontrolled"  # left to the next evaluation


def test_an_acknowledgement_made_while_the_tick_escalates_is_not_overwritten(store, monkeypatch):
    worker, pid, plan_id = _enrolled(store)
    due = at(0) + timedelta(days=90)  # the routine follow-up, 3 months on
    worker.tick(due + timedelta(days=4))  # overdue: follow-up-overdue opens (acknowledge in P2D)
    [issue] = [
        i for i in store.search("DetectedIssue", [("patient", f"Patient/{pid}")]).resources
        if i["code"]["coding"][0]["code"] == "follow-up-overdue"
    ]  # fmt: skip
    real = worker_module.escalations

    def doctor_acknowledges_meanwhile(issues, teams, now):  # noqa: ANN001, ANN202
        out = real(issues, teams, now)  # the tick has read the open alert
        current = store.read("DetectedIssue", issue["id"])
        current["status"] = "final"
        current["mitigation"] = [{"action": {"text": "phoned the patient, visit booked"}}]
        store.update("DetectedIssue", issue["id"], current,
                     if_match=f'W/"{current["meta"]["versionId"]}"')  # fmt: skip
        return out

    monkeypatch.setattr(worker_module, "escalations", doctor_acknowledges_meanwhile)
    assert worker.tick(due + timedelta(days=7)) == 0  # nothing escalated over the doctor
    final = store.read("DetectedIssue", issue["id"])
    assert final["status"] == "final"
    assert final["mitigation"][0]["action"]["text"] == "phoned the patient, visit booked"
    team = store.read("CarePlan", plan_id)["careTeam"][0]["reference"]
    assert store.search("Communication", [("recipient", team)]).resources == []
