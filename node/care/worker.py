"""The care worker (I/O edge): the store's commit events drive enrolment, the rule engine, plan
revisions and alerts; a scheduler tick on an injectable clock finds missing readings, overdue
follow-ups and unacknowledged alerts.

Subscribed to ``store.events`` as ``care-engine`` with ``auto_commit=False``: the commit handler
only queues the events (the writer's request must not wait for the rules); the worker thread
handles them and then stores its position. A crash between its writes and its position replays
those events, and the replay is harmless: enrolment skips a pathway the patient already has an
active plan for, and an alert is a conditional create keyed by rule, patient and time.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from node.care.alerts import (
    ALERT_ID_SYSTEM,
    communication,
    detected_issue,
    escalations,
    open_alert_keys,
)
from node.care.apply import PLAN_ID_SYSTEM, apply_pathway, urn
from node.care.definitions import CareDefinitions, Pathway
from node.care.engine import AlertDecision, ControlChange, ModelCard, PlanContext, evaluate
from node.care.enrolment import enrolling_pathways
from node.care.records import NODE_USER_SYSTEM, PatientRecords, exists, practitioner_for_user
from node.care.revision import control_of, revise_plan
from node.store import FhirStore

__all__ = ["CareWorker", "CARE_WRITER", "TRIGGERS", "load_into_store"]

log = logging.getLogger("ipjms.node.care")
CARE_WRITER = "feature:care-engine"
TRIGGERS = frozenset({"Observation", "QuestionnaireResponse", "Encounter", "RiskAssessment"})
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def load_into_store(store: FhirStore, definitions: CareDefinitions) -> None:
    """Put every PlanDefinition and ActivityDefinition into the store under its own id (an
    unchanged resource makes no new version)."""
    entries = []
    for pathway in definitions.pathways:
        for res in [pathway.plan_definition, *pathway.activity_definitions.values()]:
            url = f"{res['resourceType']}/{res['id']}"
            entries.append({"resource": dict(res), "request": {"method": "PUT", "url": url}})
    store.transaction({"resourceType": "Bundle", "type": "transaction", "entry": entries},
                      writer=CARE_WRITER)  # fmt: skip


def _pid(resource: Mapping[str, Any]) -> str | None:
    for name in ("subject", "patient", "for"):
        ref = (resource.get(name) or {}).get("reference", "")
        if isinstance(ref, str) and ref.startswith("Patient/"):
            return ref.removeprefix("Patient/")
    return None


class CareWorker:
    def __init__(
        self,
        store: FhirStore,
        definitions: CareDefinitions,
        *,
        responsible_user: str = "care-lead",
        clock: Clock = utc_now,
        tick_seconds: float = 60.0,
        model_cards: Mapping[str, ModelCard] | None = None,
        name: str = "care-engine",
    ) -> None:
        self.store, self.definitions, self.clock = store, definitions, clock
        self.responsible_user, self.tick_seconds, self.name = responsible_user, tick_seconds, name
        self.model_cards = dict(model_cards or {})
        self._queue: queue.Queue[list[Any]] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sub: Any = None
        self.responsible: str = ""

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        load_into_store(self.store, self.definitions)
        self.responsible = self._ensure_practitioner(self.responsible_user)
        self._sub = self.store.events.subscribe(self.name, self._offer, auto_commit=False)
        self._thread = threading.Thread(target=self._run, name="care-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._sub is not None:
            self._sub.close()

    def _offer(self, events: Sequence[Any]) -> None:
        self._queue.put(list(events))  # quick: the committing request is waiting

    def _run(self) -> None:
        next_tick = time.monotonic() + self.tick_seconds
        while not self._stop.is_set():
            try:
                batch = self._queue.get(timeout=0.2)
            except queue.Empty:
                batch = None
            try:
                if batch:
                    self.handle(batch)
                    self.store.events.commit_position(self.name, batch[-1].position)
                else:
                    self._sub.poll()  # commits of the node's other worker processes
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + self.tick_seconds
                    self.tick()
            except Exception:  # keep the worker alive; the events come again after a restart
                log.exception("care worker: batch failed (position not advanced)")

    def _ensure_practitioner(self, username: str) -> str:
        found = practitioner_for_user(self.store, username)
        if found:
            return found
        body = {
            "resourceType": "Practitioner",
            "identifier": [{"system": NODE_USER_SYSTEM, "value": username}],
            "active": True,
        }
        out = self.store.create(
            body, if_none_exist=f"identifier={NODE_USER_SYSTEM}|{username}", writer=CARE_WRITER
        )
        return f"Practitioner/{out.resource['id']}"

    # -- commit events ---------------------------------------------------------------------
    def handle(self, events: Sequence[Any]) -> None:
        """Enrol on Conditions, then evaluate each touched patient's plans once."""
        now = self.clock()
        touched: dict[str, list[dict[str, Any]]] = {}
        for e in events:
            if e.writer == CARE_WRITER or e.interaction == "delete":
                continue
            if e.resource_type != "Condition" and e.resource_type not in TRIGGERS:
                continue
            res = self.store.vread(e.resource_type, e.resource_id, e.version_id)
            pid = _pid(res)
            if pid is None:
                continue
            if e.resource_type == "Condition":
                self.enrol(res, now)
            else:
                touched.setdefault(pid, []).append(res)
        for pid, new in touched.items():
            self.evaluate_patient(pid, new, now)

    def enrol(self, condition: Mapping[str, Any], now: datetime, practitioner: str = "") -> list:
        """Apply every pathway ``condition`` enrols its patient in that they are not on yet."""
        pid = _pid(condition)
        records = PatientRecords(self.store, pid or "")
        patient = records.patient() if pid else None
        if patient is None:
            return []
        made = []
        for pathway in enrolling_pathways(condition, self.definitions.pathways):
            if records.plan_for(pathway.key) is not None:
                continue
            who = practitioner or self._responsible_for(condition)
            cond_ref = f"Condition/{condition['id']}" if condition.get("id") else None
            applied = apply_pathway(
                pathway, patient, who, records.medications(), now, "unknown", cond_ref
            )
            self.store.transaction(applied.transaction(), writer=CARE_WRITER)
            made.append(pathway.key)
            log.info("care: enrolled a patient on %s", pathway.key)  # ids only, no PHI
        return made

    def _responsible_for(self, condition: Mapping[str, Any]) -> str:
        for name in ("recorder", "asserter"):
            ref = (condition.get(name) or {}).get("reference", "")
            if ref.startswith("Practitioner/") and exists(self.store, ref):
                return str(ref)
        return self.responsible

    def _context(self, pid: str, careplan: dict[str, Any], records: PatientRecords) -> Any:
        pathway = self.definitions.by_url(careplan.get("instantiatesCanonical", [""])[0])
        if pathway is None:
            return None
        return PlanContext(
            patient=f"Patient/{pid}",
            pathway=pathway,
            careplan=careplan,
            follow_ups=tuple(records.follow_ups(careplan["id"])),
            practitioner=(careplan.get("author") or {}).get("reference") or self.responsible,
            control_status=control_of(careplan),
            model_cards=self.model_cards,
        )

    def evaluate_patient(self, pid: str, new: list[dict[str, Any]], now: datetime) -> int:
        """Run the rules of each of the patient's plans; persist alerts and plan revisions.
        Returns the number of alerts opened."""
        records = PatientRecords(self.store, pid)
        plans = records.care_plans()
        if not plans:
            return 0
        recent = records.recent(now)
        open_keys = open_alert_keys(records.open_alerts())
        opened = 0
        for careplan in plans:
            ctx = self._context(pid, careplan, records)
            if ctx is None:
                continue
            for d in evaluate(ctx, new, recent, open_keys, now):
                if isinstance(d, AlertDecision):
                    self._open_alert(d, ctx.pathway, ctx.practitioner, now)
                    open_keys.add(d.key)
                    opened += 1
                elif isinstance(d, ControlChange):
                    self._revise(records, ctx, careplan, d, now)
        return opened

    def _open_alert(self, d: AlertDecision, pathway: Pathway, practitioner: str, now: datetime):
        issue = detected_issue(d, pathway.url, practitioner)
        issue_url = urn(d.patient, d.rule.id, issue["identifiedDateTime"], "DetectedIssue")
        key = issue["identifier"][0]["value"]
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": issue_url,
                    "resource": issue,
                    "request": {
                        "method": "POST",
                        "url": "DetectedIssue",
                        "ifNoneExist": f"identifier={ALERT_ID_SYSTEM}|{key}",
                    },
                },
                {
                    "fullUrl": urn(issue_url, "Communication"),
                    "resource": communication(issue_url, d, practitioner, now),
                    "request": {"method": "POST", "url": "Communication"},
                },
            ],
        }
        self.store.transaction(bundle, writer=CARE_WRITER)
        log.info("care: alert %s opened", d.rule.id)

    def _revise(self, records, ctx, careplan, change: ControlChange, now: datetime) -> None:  # type: ignore[no-untyped-def]
        patient = records.patient()
        if patient is None:
            return
        revision = revise_plan(
            ctx.pathway,
            patient,
            careplan,
            list(ctx.follow_ups),
            change.status,
            change.reason,
            ctx.practitioner,
            records.medications(),
            now,
        )
        if revision is not None:
            self.store.transaction(revision.transaction(), writer=CARE_WRITER)
            log.info("care: plan revised (%s → %s)", change.previous, change.status)

    # -- scheduler -------------------------------------------------------------------------
    def tick(self, now: datetime | None = None) -> int:
        """Absence rules for every active plan, then escalation of overdue urgent alerts.
        Returns the number of alerts opened plus escalations sent."""
        now = now or self.clock()
        plans = self.store.search(
            "CarePlan",
            [
                ("identifier", f"{PLAN_ID_SYSTEM}|"),
                ("status", "active"),
                ("_count", "1000"),
            ],  # fmt: skip
        ).resources
        count = 0
        teams: dict[str, str] = {}
        for pid in sorted({p["subject"]["reference"].removeprefix("Patient/") for p in plans}):
            count += self.evaluate_patient(pid, [], now)
        for p in plans:
            team = (p.get("careTeam") or [{}])[0].get("reference")
            if team:
                teams[p["subject"]["reference"]] = team
        issues = self.store.search(
            "DetectedIssue", [("status", "preliminary"), ("_count", "1000")]
        ).resources
        for body, message in escalations(issues, teams, now):
            self.store.transaction(
                {
                    "resourceType": "Bundle",
                    "type": "transaction",
                    "entry": [
                        {
                            "resource": body,
                            "request": {"method": "PUT", "url": f"DetectedIssue/{body['id']}"},
                        },
                        {
                            "resource": message,
                            "request": {"method": "POST", "url": "Communication"},
                        },
                    ],
                },
                writer=CARE_WRITER,
            )
            count += 1
        return count
