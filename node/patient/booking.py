"""Follow-up booking: clinics publish ``Schedule`` / ``Slot``s; a patient books, cancels and
reschedules an ``Appointment`` on a free Slot.

A slot can never be booked twice: booking is one transaction that turns the Slot from ``free``
to ``busy`` *on the version it read* (``If-Match``) and creates the Appointment. Of any number of
concurrent bookings of one slot the store commits exactly one (versions are a primary key, and a
retried transaction sees the new version); the others get 409 Conflict and nothing is written.
Cancel frees the slot and reschedule moves to another free slot the same way, each in one
transaction. The booking writes as the caller (``writer``) but the Slot change is this module's
rule, not the patient's scope: patients may not write Slots themselves.

Reminders: :func:`reminders` lists a patient's booked visits with the time to remind them
(``REMIND_BEFORE`` ahead); sending them (SMS, app push) is not built.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from node.store import parse_bundle
from servicekit.outcome import Conflict, NotFound, PreconditionFailed, Unprocessable

__all__ = ["book", "cancel", "reschedule", "free_slots", "reminders", "REMIND_BEFORE"]

REMIND_BEFORE = timedelta(hours=24)


def _version(resource: dict[str, Any]) -> str:
    return str((resource.get("meta") or {}).get("versionId", ""))


def _slot_id(ref: Any) -> str:
    if not isinstance(ref, str) or not ref.strip():
        raise Unprocessable('name the slot: {"slot": "Slot/<id>"}')
    return ref.removeprefix("Slot/")


def _free_slot(store: Any, slot_id: str) -> dict[str, Any]:
    try:
        slot = store.read("Slot", slot_id)
    except NotFound:
        raise NotFound(f"Slot/{slot_id} does not exist") from None
    if slot.get("status") != "free":
        raise Conflict(f"Slot/{slot_id} is not free")
    return dict(slot)


def _put(resource: dict[str, Any], version: str) -> dict[str, Any]:
    rtype, rid = resource["resourceType"], resource["id"]
    request = {"method": "PUT", "url": f"{rtype}/{rid}", "ifMatch": f'W/"{version}"'}
    return {"resource": resource, "request": request}


def _commit(store: Any, entries: list[dict[str, Any]], writer: str) -> dict[str, Any]:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    try:
        return dict(store.transaction(parse_bundle(bundle, "transaction"), writer=writer))
    except PreconditionFailed:
        raise Conflict("the slot was just booked by someone else; choose another") from None


def _appointment_of(store: Any, appointment_id: str, patient: str) -> dict[str, Any]:
    appt = dict(store.read("Appointment", appointment_id))
    me = f"Patient/{patient}"
    if not any((p.get("actor") or {}).get("reference") == me for p in appt.get("participant", [])):
        raise NotFound(f"Appointment/{appointment_id} is not available to this token")
    return appt


def free_slots(store: Any, *, start: str | None = None, count: int = 50) -> list[dict[str, Any]]:
    since = start or datetime.now(UTC).isoformat()
    params = [("status", "free"), ("start", f"ge{since}"), ("_count", str(count))]
    return list(store.search("Slot", params).resources)


def book(store: Any, patient: str, slot_ref: Any, writer: str) -> dict[str, Any]:
    slot = _free_slot(store, _slot_id(slot_ref))
    version = _version(slot)
    slot["status"] = "busy"
    appointment = {
        "resourceType": "Appointment",
        "status": "booked",
        "slot": [{"reference": f"Slot/{slot['id']}"}],
        "start": slot.get("start"),
        "end": slot.get("end"),
        "serviceType": slot.get("serviceType", []),
        "participant": [
            {"actor": {"reference": f"Patient/{patient}"}, "status": "accepted"},
            {"actor": slot["schedule"], "status": "accepted"},
        ],
    }
    ref = f"urn:uuid:{uuid.uuid4()}"
    return _commit(
        store,
        [
            _put(slot, version),
            {
                "fullUrl": ref,
                "resource": appointment,
                "request": {"method": "POST", "url": "Appointment"},
            },
        ],
        writer,
    )


def cancel(store: Any, patient: str, appointment_id: str, writer: str) -> dict[str, Any]:
    appt = _appointment_of(store, appointment_id, patient)
    if appt.get("status") != "booked":
        raise Conflict(f"Appointment/{appointment_id} is {appt.get('status')}, not booked")
    entries = [_put({**appt, "status": "cancelled"}, _version(appt))]
    for ref in appt.get("slot", []):
        slot = dict(store.read("Slot", _slot_id(ref.get("reference"))))
        entries.append(_put({**slot, "status": "free"}, _version(slot)))
    return _commit(store, entries, writer)


def reschedule(
    store: Any, patient: str, appointment_id: str, slot_ref: Any, writer: str
) -> dict[str, Any]:
    appt = _appointment_of(store, appointment_id, patient)
    if appt.get("status") != "booked":
        raise Conflict(f"Appointment/{appointment_id} is {appt.get('status')}, not booked")
    new = _free_slot(store, _slot_id(slot_ref))
    entries = [_put({**new, "status": "busy"}, _version(new))]
    for ref in appt.get("slot", []):
        old = dict(store.read("Slot", _slot_id(ref.get("reference"))))
        if old["id"] == new["id"]:
            raise Conflict("that is the appointment's own slot")
        entries.append(_put({**old, "status": "free"}, _version(old)))
    moved = {**appt, "slot": [{"reference": f"Slot/{new['id']}"}], "start": new.get("start"),
             "end": new.get("end")}  # fmt: skip
    entries.append(_put(moved, _version(appt)))
    return _commit(store, entries, writer)


def reminders(store: Any, patient: str, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """The patient's booked visits still ahead, each with when to remind them."""
    now = now or datetime.now(UTC)
    params = [
        ("patient", f"Patient/{patient}"),
        ("status", "booked"),
        ("date", f"ge{now.isoformat()}"),
    ]
    out = []
    for appt in store.search("Appointment", params).resources:
        start = datetime.fromisoformat(str(appt["start"]).replace("Z", "+00:00"))
        out.append({"appointment": f"Appointment/{appt['id']}", "start": appt["start"],
                    "remind_at": (start - REMIND_BEFORE).isoformat()})  # fmt: skip
    return sorted(out, key=lambda r: r["start"])
