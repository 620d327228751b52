"""Issue 15 must-show 4 (booking): 20 concurrent requests to book one slot → exactly one
booking, the others a clear 409 OperationOutcome; cancel frees the slot, reschedule moves the
visit; reminders list the visits ahead."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from patient.region_harness import Region
from patient.stored import stored


def _publish(region: Region, n: int) -> list[str]:
    """A clinic's schedule with ``n`` free slots (as the doctor, over the FHIR API)."""
    schedule = region.post("/fhir/Schedule", {"resourceType": "Schedule", "active": True,
        "actor": [{"display": "HF clinic"}]}, region.doctor)  # fmt: skip
    assert schedule.status_code == 201, schedule.text
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=7)
    ids = []
    for i in range(n):
        slot = {
            "resourceType": "Slot",
            "status": "free",
            "schedule": {"reference": f"Schedule/{schedule.json()['id']}"},
            "start": (start + timedelta(minutes=30 * i)).isoformat(),
            "end": (start + timedelta(minutes=30 * i + 30)).isoformat(),
        }
        r = region.post("/fhir/Slot", slot, region.doctor)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    return ids


def _appointments_on(region: Region, slot_id: str) -> list[dict[str, Any]]:
    r = region.node.get(f"/fhir/Appointment?slot=Slot/{slot_id}&status=booked",
                        headers=region.doctor)  # fmt: skip
    return [e["resource"] for e in r.json().get("entry", [])]


def test_twenty_concurrent_bookings_of_one_slot_make_exactly_one(region: Region) -> None:
    [slot] = _publish(region, 1)
    tokens = [region.a.headers, region.b.headers] * 10

    def attempt(headers: dict[str, str]) -> Any:
        return region.node.post("/patient/appointments/$book", json={"slot": f"Slot/{slot}"},
                                headers=headers)  # fmt: skip

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(attempt, tokens))
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200] + [409] * 19, statuses
    for r in answers:
        if r.status_code == 409:
            assert r.json()["resourceType"] == "OperationOutcome"
            assert r.json()["issue"][0]["code"] == "conflict"
    assert len(_appointments_on(region, slot)) == 1
    assert region.store.read("Slot", slot)["status"] == "busy"


def test_cancel_frees_the_slot_and_reschedule_moves_the_visit(region: Region) -> None:
    first, second = _publish(region, 2)
    a = region.a.headers
    slots = region.node.get("/patient/slots", headers=a).json()["slots"]
    assert {first, second} <= {s["id"] for s in slots}
    r = region.node.post("/patient/appointments/$book", json={"slot": first}, headers=a)
    assert r.status_code == 200, r.text
    appt_id = next(e["response"]["location"].split("/")[1] for e in r.json()["entry"]
                   if e["response"]["location"].startswith("Appointment/"))  # fmt: skip
    appt = region.store.read("Appointment", appt_id)
    assert {"reference": f"Patient/{region.a.patient_id}"} in [
        p["actor"] for p in appt["participant"]
    ]
    reminders = region.node.get("/patient/reminders", headers=a).json()["reminders"]
    mine = next(x for x in reminders if x["appointment"] == f"Appointment/{appt_id}")
    assert datetime.fromisoformat(mine["start"]) - datetime.fromisoformat(
        mine["remind_at"]
    ) == timedelta(hours=24)
    # B cannot touch A's appointment
    r = region.node.post(f"/patient/appointments/{appt_id}/$cancel", headers=region.b.headers)
    assert r.status_code == 404
    r = region.node.post(f"/patient/appointments/{appt_id}/$reschedule", json={"slot": second},
                         headers=a)  # fmt: skip
    assert r.status_code == 200, r.text
    assert region.store.read("Slot", first)["status"] == "free"
    assert region.store.read("Slot", second)["status"] == "busy"
    assert region.store.read("Appointment", appt_id)["slot"] == [{"reference": f"Slot/{second}"}]
    r = region.node.post(f"/patient/appointments/{appt_id}/$cancel", headers=a)
    assert r.status_code == 200, r.text
    assert region.store.read("Slot", second)["status"] == "free"
    assert region.store.read("Appointment", appt_id)["status"] == "cancelled"
    again = region.node.post(f"/patient/appointments/{appt_id}/$cancel", headers=a)
    assert again.status_code == 409


def test_booking_a_taken_or_unknown_slot_changes_nothing(region: Region) -> None:
    [slot] = _publish(region, 1)
    a = region.a.headers
    assert (
        region.node.post("/patient/appointments/$book", json={"slot": slot}, headers=a).status_code
        == 200
    )
    before = stored(region, "Appointment", "Slot")
    taken = region.node.post(
        "/patient/appointments/$book", json={"slot": slot}, headers=region.b.headers
    )
    assert taken.status_code == 409
    missing = region.node.post("/patient/appointments/$book", json={"slot": "Slot/nope"}, headers=a)
    assert missing.status_code == 404
    assert stored(region, "Appointment", "Slot") == before
