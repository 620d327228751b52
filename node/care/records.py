"""What the care worker reads from the node's store (I/O): a patient's plans, recent data, open
alerts, active medications. Every read is a store search; nothing here decides anything."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from node.care.alerts import OPEN
from node.care.apply import PLAN_ID_SYSTEM, iso
from node.store import FhirStore
from servicekit.outcome import FhirError

__all__ = [
    "PatientRecords",
    "BatchRecords",
    "RECENT_WINDOW",
    "NODE_USER_SYSTEM",
    "practitioner_for_user",
    "exists",
]

RECENT_WINDOW = timedelta(days=30)
NODE_USER_SYSTEM = "https://ipjms.example.org/fhir/sid/node-user"
PAGE = "1000"
CHUNK = 50  # patients per search (the values of one OR-list parameter)


def _all(store: FhirStore, rtype: str, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return store.search(rtype, [*params, ("_count", PAGE)]).resources


def _pages(store: FhirStore, rtype: str, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Every match, page by page (``_offset``), so a batch never silently drops results."""
    out: list[dict[str, Any]] = []
    while True:
        page = store.search(rtype, [*params, ("_count", PAGE), ("_offset", str(len(out)))])
        out += page.resources
        if len(page.resources) < int(PAGE):
            return out


def _chunks(values: list[str]) -> list[list[str]]:
    return [values[i : i + CHUNK] for i in range(0, len(values), CHUNK)]


def _ref_of(resource: Mapping[str, Any], *names: str) -> list[str]:
    refs: list[str] = []
    for name in names:
        value = resource.get(name)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict) and isinstance(item.get("reference"), str):
                refs.append(item["reference"])
    return refs


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


class BatchRecords:
    """The same reads for many patients at once (``pids``: bare Patient ids): one search per kind
    for every :data:`CHUNK` patients, results grouped by patient — a batch of commit events costs
    a handful of searches, not a handful per patient."""

    def __init__(self, store: FhirStore, pids: list[str]) -> None:
        self.store, self.pids = store, sorted(set(pids))

    def _by_patient(
        self, rtype: str, params: list[tuple[str, str]], param: str = "patient",
        field: str = "subject",
    ) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
        out: dict[str, list[dict[str, Any]]] = {pid: [] for pid in self.pids}
        for chunk in _chunks(self.pids):
            refs = ",".join(f"Patient/{pid}" for pid in chunk)
            for res in _pages(self.store, rtype, [(param, refs), *params]):
                for ref in _ref_of(res, field):
                    pid = ref.removeprefix("Patient/")
                    if pid in out:
                        out[pid].append(res)
        return out

    def patients(self) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(self.pids):
            for res in _pages(self.store, "Patient", [("_id", ",".join(chunk))]):
                found[res["id"]] = res
        return found

    def care_plans(self) -> dict[str, list[dict[str, Any]]]:
        return self._by_patient(
            "CarePlan", [("status", "active"), ("identifier", f"{PLAN_ID_SYSTEM}|")]
        )

    def follow_ups(self, careplan_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """CarePlan id → its Tasks and ServiceRequests."""
        out: dict[str, list[dict[str, Any]]] = {cid: [] for cid in careplan_ids}
        for rtype in ("Task", "ServiceRequest"):
            for chunk in _chunks(sorted(set(careplan_ids))):
                refs = ",".join(f"CarePlan/{cid}" for cid in chunk)
                for res in _pages(self.store, rtype, [("based-on", refs)]):
                    for ref in _ref_of(res, "basedOn"):
                        cid = ref.removeprefix("CarePlan/")
                        if cid in out:
                            out[cid].append(res)
        return out

    def recent(self, now: datetime, *, encounters: bool = True) -> dict[str, list[dict[str, Any]]]:
        """Each patient's Observations (and Encounters) of the last RECENT_WINDOW."""
        since = [("date", f"ge{iso(now - RECENT_WINDOW)}")]
        obs = self._by_patient("Observation", since)
        if not encounters:
            return obs
        visits = self._by_patient("Encounter", since)
        return {pid: obs[pid] + visits[pid] for pid in self.pids}

    def open_alerts(self) -> dict[str, list[dict[str, Any]]]:
        return self._by_patient("DetectedIssue", [("status", OPEN)], field="patient")

    def medications(self) -> dict[str, list[dict[str, Any]]]:
        return self._by_patient("MedicationRequest", [("status", "active")])


def exists(store: FhirStore, reference: str) -> bool:
    rtype, _, rid = reference.partition("/")
    try:
        store.read(rtype, rid)
    except FhirError:
        return False
    return True
