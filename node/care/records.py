"""What the care worker reads from the node's store (I/O): a patient's plans, recent data, open
alerts, active medications. Every read is a store search; nothing here decides anything."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from node.care.alerts import OPEN
from node.care.apply import PLAN_ID_SYSTEM, iso
from node.store import FhirStore
from servicekit.outcome import FhirError

__all__ = [
    "PatientRecords",
    "RECENT_WINDOW",
    "NODE_USER_SYSTEM",
    "practitioner_for_user",
    "exists",
]

RECENT_WINDOW = timedelta(days=30)
NODE_USER_SYSTEM = "https://ipjms.example.org/fhir/sid/node-user"
PAGE = "1000"


def _all(store: FhirStore, rtype: str, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return store.search(rtype, [*params, ("_count", PAGE)]).resources


def practitioner_for_user(store: FhirStore, username: str) -> str | None:
    """``Practitioner/<id>`` of the node account ``username`` (identifier node-user|name)."""
    found = store.search("Practitioner", [("identifier", f"{NODE_USER_SYSTEM}|{username}")])
    return f"Practitioner/{found.resources[0]['id']}" if found.resources else None


class PatientRecords:
    """Reads for one patient (``pid`` is the bare Patient id)."""

    def __init__(self, store: FhirStore, pid: str) -> None:
        self.store, self.pid = store, pid

    def patient(self) -> dict[str, Any] | None:
        try:
            return self.store.read("Patient", self.pid)
        except FhirError:
            return None

    def care_plans(self) -> list[dict[str, Any]]:
        return _all(
            self.store,
            "CarePlan",
            [
                ("patient", f"Patient/{self.pid}"),
                ("status", "active"),
                ("identifier", f"{PLAN_ID_SYSTEM}|"),
            ],
        )

    def plan_for(self, pathway_key: str) -> dict[str, Any] | None:
        value = f"{PLAN_ID_SYSTEM}|{pathway_key}/{self.pid}"
        found = _all(self.store, "CarePlan", [("identifier", value), ("status", "active")])
        return found[0] if found else None

    def follow_ups(self, careplan_id: str) -> list[dict[str, Any]]:
        based = [("based-on", f"CarePlan/{careplan_id}")]
        return _all(self.store, "Task", based) + _all(self.store, "ServiceRequest", based)

    def recent(self, now: datetime) -> list[dict[str, Any]]:
        since = [("patient", f"Patient/{self.pid}"), ("date", f"ge{iso(now - RECENT_WINDOW)}")]
        return _all(self.store, "Observation", since) + _all(self.store, "Encounter", since)

    def open_alerts(self) -> list[dict[str, Any]]:
        return _all(
            self.store, "DetectedIssue", [("patient", f"Patient/{self.pid}"), ("status", OPEN)]
        )

    def medications(self) -> list[dict[str, Any]]:
        return _all(
            self.store,
            "MedicationRequest",
            [("patient", f"Patient/{self.pid}"), ("status", "active")],
        )


def exists(store: FhirStore, reference: str) -> bool:
    rtype, _, rid = reference.partition("/")
    try:
        store.read(rtype, rid)
    except FhirError:
        return False
    return True
