"""The patient's care pages (issue 16 over issue 15's APIs), in process: the real node app of
``node.app.create_app`` (SQLite in a temp dir) through FastAPI's TestClient; a node-local patient
account signs in through ``/app/sign-in`` and the node's own login page as the pages do.
Checks what a page changes in the store and what it shows; a POST without the CSRF token is
refused; the CSP header is sent."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from deploy.demo.staff_sign_in import sign_in_staff
from node.app import create_app
from node.patient.tables import education_read
from node.settings import load_settings

PASSWORD = "a long patient password 7"
PID = "p-care-pages"
HF = "https://ipjms.example.org/fhir/PlanDefinition/heart-failure"


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert found is not None
    return found.group(1)


class Patient:
    def __init__(self, app: Any, client: TestClient) -> None:
        self.app, self.client, self.store = app, client, app.state.store
        self.csrf = ""

    def get(self, path: str) -> Any:
        r = self.client.get(path)
        assert r.status_code == 200, (path, r.status_code, r.text[:400])
        self.csrf = _csrf(r.text)
        return r

    def post(self, path: str, data: dict[str, str] | None = None, csrf: bool = True) -> Any:
        body = dict(data or {})
        if csrf:
            body["csrf_token"] = self.csrf
        return self.client.post(path, data=body, follow_redirects=True)


@pytest.fixture(scope="module")
def patient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Patient]:
    folder: Path = tmp_path_factory.mktemp("care-pages")
    settings = load_settings(folder / "node", org_id="org-pages", name="Pages clinic")
    app = create_app(settings)
    store = app.state.store
    store.update("Patient", PID, {"resourceType": "Patient", "id": PID,
                 "name": [{"family": "Wang", "given": ["Fang"]}]}, writer="test:seed")  # fmt: skip
    store.create({"resourceType": "CarePlan", "status": "active", "intent": "plan",
                  "instantiatesCanonical": [HF], "subject": {"reference": f"Patient/{PID}"}},
                 writer="test:seed")  # fmt: skip
    schedule = store.create({"resourceType": "Schedule", "active": True,
                             "actor": [{"display": "HF clinic"}]}, writer="test:seed")  # fmt: skip
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=7)
    for i in range(2):
        store.create({"resourceType": "Slot", "status": "free",
                      "schedule": {"reference": f"Schedule/{schedule.resource['id']}"},
                      "start": (start + timedelta(minutes=30 * i)).isoformat(),
                      "end": (start + timedelta(minutes=30 * i + 30)).isoformat()},
                     writer="test:seed")  # fmt: skip
    app.state.auth.accounts.add_user("wang-fang", PASSWORD, "patient", patient_id=PID)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        me = Patient(app, client)
        r = sign_in_staff(client, "wang-fang", PASSWORD)
        assert r.status_code == 303, r.text
        yield me


def _handles(html: str, action: str) -> list[str]:
    return re.findall(rf'action="/app/me/{action}/([^/"]+)/', html)


def test_education_lists_my_items_in_both_languages_and_mark_read_persists(
    patient: Patient,
) -> None:
    page = patient.get("/app/me/education")
    assert "少盐饮食" in page.text  # the heart-failure plan's diet item, in Chinese (default)
    assert "Content-Security-Policy" in page.headers
    assert "script-src" in page.headers["Content-Security-Policy"]
    handles = _handles(page.text, "education")
    assert handles and not any(h.startswith("hf-") for h in handles)  # opaque, not item ids
    assert patient.post("/app/language", {"lang": "en"}).status_code == 200
    page = patient.get("/app/me/education")
    assert "Eat less salt" in page.text
    first = _handles(page.text, "education")[0]
    refused = patient.post(f"/app/me/education/{first}/read", csrf=False)
    assert refused.status_code == 403
    engine = patient.app.state.services.engine
    with engine.connect() as conn:
        assert conn.execute(select(education_read)).all() == []
    r = patient.post(f"/app/me/education/{first}/read")
    assert r.status_code == 200, r.text[:400]
    with engine.connect() as conn:
        rows = conn.execute(select(education_read.c.patient_id, education_read.c.item_id)).all()
    assert [(row.patient_id, row.item_id) for row in rows] == [(PID, "hf-diet")]
    assert "Read on" in r.text and len(_handles(r.text, "education")) == len(handles) - 1
    assert patient.post("/app/me/education/not-a-handle/read").status_code == 404


def _booked(patient: Patient) -> list[dict[str, Any]]:
    found = patient.store.search("Appointment", [("patient", f"Patient/{PID}")]).resources
    return [a for a in found if a.get("status") == "booked"]


def test_booking_a_slot_makes_one_appointment_and_a_second_booking_is_refused(
    patient: Patient,
) -> None:
    page = patient.get("/app/me/appointments")
    assert "Content-Security-Policy" in page.headers
    slots = _handles(page.text, "appointments")
    assert len(slots) == 2 and not _booked(patient)
    assert patient.post(f"/app/me/appointments/{slots[0]}/book", csrf=False).status_code == 403
    assert not _booked(patient)
    r = patient.post(f"/app/me/appointments/{slots[0]}/book")
    assert r.status_code == 200, r.text[:400]
    [appt] = _booked(patient)
    slot_id = appt["slot"][0]["reference"].split("/")[1]
    assert patient.store.read("Slot", slot_id)["status"] == "busy"
    assert 'id="notice"' in r.text
    again = patient.post(f"/app/me/appointments/{slots[0]}/book")  # the same slot again
    assert again.status_code == 409
    assert 'id="refused"' in again.text
    assert len(_booked(patient)) == 1
    # the visit is listed with its reminder; cancel frees the slot
    visits = re.findall(r'action="/app/me/appointments/([^/"]+)/cancel"', again.text)
    assert len(visits) == 1 and slot_id not in again.text and appt["id"] not in again.text
    r = patient.post(f"/app/me/appointments/{visits[0]}/cancel")
    assert r.status_code == 200, r.text[:400]
    assert _booked(patient) == []
    assert patient.store.read("Slot", slot_id)["status"] == "free"


def test_questionnaire_form_submit_shows_the_score_equal_to_the_hand_sum(
    patient: Patient,
) -> None:
    listing = patient.get("/app/me/questionnaires")
    links = re.findall(r'href="/app/me/questionnaires/([^"]+)"', listing.text)
    assert len(links) == 3 and "phq-9" not in listing.text
    spec = json.loads(
        (Path(__file__).parents[2] / "node/patient/questionnaires/phq-9.json").read_text()
    )
    phq = next(h for h in links if "PHQ-9" in patient.get(f"/app/me/questionnaires/{h}").text)
    form = patient.get(f"/app/me/questionnaires/{phq}")
    questions = [i for i in spec["item"] if i["linkId"].startswith("phq9-q")]
    assert all(f'name="{i["linkId"]}"' in form.text for i in questions)
    choice = {i["linkId"]: (n * 2 + 1) % len(i["answerOption"]) for n, i in enumerate(questions)}
    hand_sum = 0
    for item in questions:
        option = item["answerOption"][choice[item["linkId"]]]
        hand_sum += next(e["valueDecimal"] for e in option["valueCoding"]["extension"])
    answers = {k: str(v) for k, v in choice.items()}
    assert patient.post(f"/app/me/questionnaires/{phq}", answers, csrf=False).status_code == 403
    assert patient.store.search("QuestionnaireResponse", []).resources == []
    r = patient.post(f"/app/me/questionnaires/{phq}", answers)
    assert r.status_code == 200, r.text[:400]
    assert "Content-Security-Policy" in r.headers
    shown = re.findall(r'<strong class="score">(\d+)</strong>', r.text)
    assert shown == [str(int(hand_sum))]
    [stored] = patient.store.search("QuestionnaireResponse", []).resources
    total = next(i for i in stored["item"] if i["linkId"] == "phq9-total")
    assert total["answer"][0]["valueInteger"] == hand_sum


def _doses(patient: Patient) -> list[dict[str, Any]]:
    return patient.store.search("MedicationAdministration", []).resources


def test_medication_check_in_on_the_page_is_stored_and_only_for_my_own(patient: Patient) -> None:
    """Today's medications with a taken / missed form: a check-in on the page is the API's
    MedicationAdministration; no CSRF → 403 and nothing stored; another patient's session
    cannot check in for this one (the handle is not theirs: 404, nothing stored)."""
    store, seed = patient.store, "test:seed"
    mine = store.create({"resourceType": "MedicationRequest", "status": "active",
                         "intent": "order", "subject": {"reference": f"Patient/{PID}"},
                         "medicationCodeableConcept": {"text": "Metoprolol 47.5 mg"},
                         "dosageInstruction": [{"text": "once a day"}]},
                        writer=seed).resource  # fmt: skip
    other_pid = "p-care-other"
    store.update("Patient", other_pid, {"resourceType": "Patient", "id": other_pid},
                 writer=seed)  # fmt: skip
    store.create({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
                  "subject": {"reference": f"Patient/{other_pid}"},
                  "medicationCodeableConcept": {"text": "Furosemide 40 mg"}},
                 writer=seed)  # fmt: skip
    page = patient.get("/app/me/medications")
    assert 'href="/app/me/medications"' in page.text  # the nav link
    assert "Metoprolol 47.5 mg" in page.text and "Furosemide" not in page.text
    [handle] = _handles(page.text, "medications")
    assert mine["id"] not in page.text
    assert "script-src" in page.headers["Content-Security-Policy"]

    assert patient.post(f"/app/me/medications/{handle}/check-in", {"dose": "taken"},
                        csrf=False).status_code == 403  # fmt: skip
    assert _doses(patient) == []
    r = patient.post(f"/app/me/medications/{handle}/check-in", {"dose": "taken"})
    assert r.status_code == 200, r.text[:400]
    assert 'id="notice"' in r.text and 'class="dose dose-taken"' in r.text
    [dose] = _doses(patient)
    assert dose["status"] == "completed"
    assert dose["request"] == {"reference": f"MedicationRequest/{mine['id']}"}
    assert dose["subject"] == {"reference": f"Patient/{PID}"}
    assert dose["effectiveDateTime"][:10] == datetime.now(UTC).date().isoformat()
    patient.csrf = _csrf(r.text)
    r = patient.post(f"/app/me/medications/{handle}/check-in", {"dose": "missed"})
    assert r.status_code == 200 and 'class="dose dose-missed"' in r.text
    assert sorted(d["status"] for d in _doses(patient)) == ["completed", "not-done"]

    # another patient's session: their page lists their own only, and my handle is refused
    patient.app.state.auth.accounts.add_user("other", PASSWORD, "patient", patient_id=other_pid)
    other = Patient(patient.app, TestClient(patient.app, base_url="http://127.0.0.1"))
    assert sign_in_staff(other.client, "other", PASSWORD).status_code == 303
    theirs = other.get("/app/me/medications")
    assert "Furosemide 40 mg" in theirs.text and "Metoprolol" not in theirs.text
    refused = other.post(f"/app/me/medications/{handle}/check-in", {"dose": "taken"})
    assert refused.status_code == 404
    assert len(_doses(patient)) == 2

    patient.post("/app/language", {"lang": "en"})
    en = patient.get("/app/me/medications")
    assert "I took this dose" in en.text and "once a day" in en.text
    patient.post("/app/language", {"lang": "zh-CN"})
    assert "我已服用本次药物" in patient.get("/app/me/medications").text
