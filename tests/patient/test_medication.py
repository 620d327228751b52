"""Issue 15 (medication check-ins): the patient marks doses taken or missed against their own
MedicationRequest; the doctor sees adherence; another patient's request is out of reach."""

from __future__ import annotations

from patient.region_harness import Region
from patient.stored import stored


def test_check_ins_give_the_doctor_adherence(region: Region) -> None:
    a = region.a
    mr = region.post("/fhir/MedicationRequest", {
        "resourceType": "MedicationRequest", "status": "active", "intent": "order",
        "medicationCodeableConcept": {"text": "furosemide 40 mg"},
        "subject": {"reference": f"Patient/{a.patient_id}"}}, region.doctor)  # fmt: skip
    assert mr.status_code == 201, mr.text
    ref = f"MedicationRequest/{mr.json()['id']}"
    for day, taken in ((1, True), (2, True), (3, False)):
        r = region.node.post("/patient/medication-checkins", headers=a.headers, json={
            "medicationRequest": ref, "taken": taken,
            "when": f"2026-03-0{day}T08:00:00+08:00"})  # fmt: skip
        assert r.status_code == 201, r.text
        assert r.json()["performer"] == [{"actor": {"reference": f"Patient/{a.patient_id}"}}]
        assert r.json()["status"] == ("completed" if taken else "not-done")
    seen = region.node.get(f"/patient/adherence?patient={a.patient_id}", headers=region.doctor)
    assert seen.status_code == 200, seen.text
    assert seen.json()["adherence"][ref] == {"taken": 2, "missed": 1, "adherence": 0.667}
    # the patient sees the same; another patient can neither check in nor look
    mine = region.node.get("/patient/adherence", headers=a.headers).json()
    assert mine["adherence"][ref]["taken"] == 2
    before = stored(region, "MedicationAdministration")
    r = region.node.post("/patient/medication-checkins", headers=region.b.headers, json={
        "medicationRequest": ref, "taken": True, "when": "2026-03-04T08:00:00+08:00"})  # fmt: skip
    assert r.status_code == 404
    r = region.node.get(f"/patient/adherence?patient={a.patient_id}", headers=region.b.headers)
    assert r.status_code == 403
    wrong = {"medicationRequest": ref, "taken": "yes", "when": "x"}
    bad = region.node.post("/patient/medication-checkins", headers=a.headers, json=wrong)
    assert bad.status_code == 422
    assert stored(region, "MedicationAdministration") == before
