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

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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
from node.care.control import CONTROLLED, UNKNOWN
from node.care.definitions import CareDefinitions, Pathway
from node.care.engine import AlertDecision, ControlChange, PlanContext, evaluate
from node.care.enrolment import enrolling_pathways
from node.care.model_gate import GateVerdict, is_labelled, label, model_of
from node.care.records import (
    CHUNK,
    NODE_USER_SYSTEM,
    BatchRecords,
    exists,
    practitioner_for_user,
)
from node.care.revision import control_of, revise_plan
from node.store import FhirStore
from servicekit.outcome import FhirError, PreconditionFailed

__all__ = ["CareWorker", "CARE_WRITER", "TRIGGERS", "load_into_store"]

log = logging.getLogger("ipjms.node.care")
CARE_WRITER = "feature:care-engine"
TRIGGERS = frozenset({"Observation", "QuestionnaireResponse", "Encounter", "RiskAssessment"})
Clock = Callable[[], datetime]
ModelGate = Callable[[str], GateVerdict]  # model id → the gate's verdict (model_cards.py)
Redo = Callable[[], "dict[str, Any] | None"]  # a conflicting write made again from the store
REVISION_RETRIES = 3  # re-reads of a plan changed between the worker's read and its write
MAX_BATCH = 2000  # events taken from the queue at once (the commit log delivers 1,000 a page)
SLICE = 250  # events handled together: one read per kind, one write; then the position is stored
WRITE_GROUP = 25  # enrolments / alerts / revisions per transaction
POSITION_EVERY = 1.0  # seconds between position writes while nothing else is written


def utc_now() -> datetime:
    return datetime.now(UTC)


def no_registry(model_id: str) -> GateVerdict:
    """The gate without a registry: no model's scores are for clinical use."""
    return GateVerdict(model_id, False, "not for clinical use: no model registry configured")


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


def _pathway_key(careplan: Mapping[str, Any]) -> str | None:
    """The pathway of one of our CarePlans, from its identifier ``<pathway>/<patient id>``."""
    for ident in careplan.get("identifier", []):
        if ident.get("system") == PLAN_ID_SYSTEM and "/" in str(ident.get("value", "")):
            return str(ident["value"]).split("/", 1)[0]
    return None


@dataclass(frozen=True)
class _RevisionJob:
    """One plan revision: made from a plan version, and made again from the stored plan when
    that version was changed meanwhile (If-Match failed)."""

    worker: CareWorker
    ctx: PlanContext
    change: ControlChange
    patient: dict[str, Any]
    medications: list[dict[str, Any]]
    now: datetime

    def make(self, plan: Mapping[str, Any], follow_ups: list[Any]) -> dict[str, Any] | None:
        revision = revise_plan(
            self.ctx.pathway,
            self.patient,
            plan,
            follow_ups,
            self.change.status,
            self.change.reason,
            self.ctx.practitioner or self.worker.responsible,
            self.medications,
            self.now,
        )
        return None if revision is None else revision.transaction()

    def redo(self, plan_id: str) -> dict[str, Any] | None:
        store = self.worker.store
        fresh = store.read("CarePlan", plan_id)
        if fresh.get("status") != "active":
            return None
        log.info("care: the plan changed since it was read; revising its new version")
        pid = self.ctx.patient.removeprefix("Patient/")
        return self.make(fresh, BatchRecords(store, [pid]).follow_ups([plan_id])[plan_id])


class CareWorker:
    def __init__(
        self,
        store: FhirStore,
        definitions: CareDefinitions,
        *,
        responsible_user: str = "care-lead",
        clock: Clock = utc_now,
        tick_seconds: float = 60.0,
        model_gate: ModelGate = no_registry,
        name: str = "care-engine",
        poll_seconds: float = 0.2,
    ) -> None:
        self.store, self.definitions, self.clock = store, definitions, clock
        self.responsible_user, self.tick_seconds, self.name = responsible_user, tick_seconds, name
        self.poll_seconds = poll_seconds
        self.model_gate = model_gate
        self._queue: queue.Queue[list[Any]] = queue.Queue()
        self._stop = threading.Event()
        self._woken = threading.Event()  # another process committed since the last poll
        self._thread: threading.Thread | None = None
        self._sub: Any = None
        self.responsible: str = ""
        self._writes = 0
        self._backoff = 1.0  # seconds before a failed batch is handled again (doubling)
        self._replay_upto: int | None = None
        self._handled = self._stored = 0  # log positions: handled, and durably stored
        self._stored_at = time.monotonic()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        load_into_store(self.store, self.definitions)
        self.responsible = self._ensure_practitioner(self.responsible_user)
        self._handled = self._stored = self.store.events.stored_position(self.name)
        self._sub = self.store.events.subscribe(self.name, self._offer, auto_commit=False)
        self._thread = threading.Thread(target=self._run, name="care-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._queue.put([])  # ends the loop's wait at once, however long its poll
        if self._thread is not None:
            self._thread.join(timeout=10)
            if not self._thread.is_alive() and self._handled > self._stored:
                self._store_position()
        if self._sub is not None:
            self._sub.close()

    def _offer(self, events: Sequence[Any]) -> None:
        self._queue.put(list(events))  # quick: the committing request is waiting

    def wake(self) -> None:
        """Another process committed: read the log now instead of at the next poll (the
        worker process is woken by its parent, ``worker_process.py``)."""
        self._woken.set()
        self._queue.put([])  # ends the loop's wait; it then polls the log at once

    def _take(self, timeout: float) -> list[Any]:
        """The queued events (waiting up to ``timeout`` for the first), a burst coalesced."""
        batch: list[Any] = []
        try:
            batch = self._queue.get(timeout=timeout) if timeout else self._queue.get_nowait()
            while len(batch) < MAX_BATCH:  # coalesce a burst: one read and write for all
                batch += self._queue.get_nowait()
        except queue.Empty:
            pass
        return batch

    def _handle_batch(self, batch: list[Any]) -> None:
        batch = [e for e in batch if e.position > self._handled]  # a replay may have done them
        for i in range(0, len(batch), SLICE):
            part = batch[i : i + SLICE]
            wrote = self.handle(part)
            self._handled = part[-1].position
            if wrote or time.monotonic() - self._stored_at >= POSITION_EVERY:
                self._store_position()

    def _catch_up(self) -> None:
        """New commits first: the scheduler's tick calls this between its chunks."""
        self._sub.poll()
        self._handle_batch(self._take(0))

    def _replay(self) -> None:
        """After a failure: handle again, from the log, everything after the last event handled
        up to what the subscription had delivered (later events come through the queue)."""
        upto = self._replay_upto or 0
        while self._handled < upto and not self._stop.is_set():
            events = [e for e in self.store.events.read_since(self._handled, SLICE)
                      if e.position <= upto]  # fmt: skip
            if not events:
                break
            self._handle_batch(events)
        self._replay_upto = None

    def _run(self) -> None:
        next_tick = time.monotonic() + self.tick_seconds
        while not self._stop.is_set():
            try:
                if self._replay_upto is not None:
                    if self._stop.wait(self._backoff):
                        break
                    self._replay()
                    self._backoff = 1.0
                    continue
                batch = self._take(self.poll_seconds)
                self._handle_batch(batch)
                if not batch or self._woken.is_set():
                    self._woken.clear()  # (a wake during the poll: polled again next round)
                    self._sub.poll()  # commits of other processes: the parent's, woken, or
                    # another worker's / an offline command's, every poll_seconds
                    if not self._queue.qsize() and self._handled > self._stored:
                        self._store_position()
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + self.tick_seconds
                    self.tick(between=self._catch_up)
            except Exception:  # keep the worker alive; nothing is skipped: replayed from the log
                if self._replay_upto is None:
                    self._replay_upto = max(self._sub.delivered, self._handled)
                else:
                    self._backoff = min(self._backoff * 2, 60.0)
                log.exception("care worker: batch failed; handled again from the log in %.0f s",
                              self._backoff)  # fmt: skip

    def _store_position(self) -> None:
        """Durably record how far the log is handled (after writes at once; otherwise at most
        every POSITION_EVERY s — a crash replays the rest, harmlessly)."""
        if self._handled > self._stored:
            self.store.events.commit_position(self.name, self._handled)
            self._stored = self._handled
        self._stored_at = time.monotonic()

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
    def handle(self, events: Sequence[Any]) -> bool:
        """Enrol on Conditions, then evaluate each touched patient's plans once — the whole batch
        with one search per kind of record and one transaction for everything it writes.
        True if it wrote anything."""
        now = self.clock()
        writes = self._writes
        conditions: list[dict[str, Any]] = []
        touched: dict[str, list[dict[str, Any]]] = {}
        wanted = [
            e for e in events
            if e.writer != CARE_WRITER and e.interaction != "delete"
            and (e.resource_type == "Condition" or e.resource_type in TRIGGERS)
        ]  # fmt: skip
        for e, res in zip(wanted, self._versions(wanted), strict=True):
            pid = _pid(res)
            if pid is None:
                continue
            if e.resource_type == "Condition":
                conditions.append(res)
            else:
                touched.setdefault(pid, []).append(res)
        if conditions:
            self.enrol_many(conditions, now)
        if touched:
            self.evaluate_patients(touched, now)
        return self._writes != writes

    def _gate_models(
        self, touched: Mapping[str, list[dict[str, Any]]]
    ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, GateVerdict]]:
        """The gate's verdict on every model whose RiskAssessments are in ``touched``; each
        score of a model gated out is labelled not for clinical use — stored as a new version
        (If-Match on the version read: a concurrent change wins, and its own event comes back
        here) and handed to the rules labelled, so it can never alert."""
        verdicts: dict[str, GateVerdict] = {}
        labelled: list[dict[str, Any]] = []
        out: dict[str, list[dict[str, Any]]] = {}
        for pid, found in touched.items():
            out[pid] = []
            for res in found:
                model = model_of(res)
                if model is not None and model not in verdicts:
                    verdicts[model] = self.model_gate(model)
                if model is not None and not verdicts[model].clinical_use and not is_labelled(res):
                    res = label(res, verdicts[model])
                    labelled.append(res)
                out[pid].append(res)
        for res in labelled:
            version = (res.get("meta") or {}).get("versionId")
            try:
                self.store.update(
                    "RiskAssessment", res["id"], res, if_match=f'W/"{version}"', writer=CARE_WRITER
                )
                self._writes += 1
            except FhirError as exc:  # changed meanwhile: that version's event labels it
                log.info("care: labelling a RiskAssessment skipped (%s)", type(exc).__name__)
        if labelled:
            log.info("care: %d model score(s) labelled not for clinical use", len(labelled))
        return out, verdicts

    def _versions(self, events: Sequence[Any]) -> list[dict[str, Any]]:
        """The resource version each event names: the current versions of a batch in one search
        per type (and chunk); a vread only for one changed since."""
        current: dict[tuple[str, str], dict[str, Any]] = {}
        by_type: dict[str, list[str]] = {}
        for e in events:
            by_type.setdefault(e.resource_type, []).append(e.resource_id)
        for rtype, ids in by_type.items():
            unique = sorted(set(ids))
            for i in range(0, len(unique), CHUNK):
                page = self.store.search(
                    rtype, [("_id", ",".join(unique[i : i + CHUNK])), ("_count", str(CHUNK))]
                )
                for res in page.resources:
                    current[(rtype, res["id"])] = res
        out = []
        for e in events:
            found = current.get((e.resource_type, e.resource_id))
            if found is None or str(found.get("meta", {}).get("versionId")) != str(e.version_id):
                found = self.store.vread(e.resource_type, e.resource_id, e.version_id)
            out.append(found)
        return out

    def enrol(self, condition: Mapping[str, Any], now: datetime, practitioner: str = "") -> list:
        """Apply every pathway ``condition`` enrols its patient in that they are not on yet."""
        return self.enrol_many([condition], now, practitioner)

    def enrol_many(
        self, conditions: Sequence[Mapping[str, Any]], now: datetime, practitioner: str = ""
    ) -> list[str]:
        """Enrol the patients of ``conditions`` (one transaction); returns the pathway keys."""
        pids = [pid for c in conditions if (pid := _pid(c))]
        if not pids:
            return []
        reads = BatchRecords(self.store, pids)
        patients = reads.patients()
        plans = reads.care_plans()
        medications = reads.medications()
        have = {(pid, key) for pid, found in plans.items() for p in found
                if (key := _pathway_key(p))}  # fmt: skip
        made: list[str] = []
        work: list[dict[str, Any]] = []
        for condition in conditions:
            pid = _pid(condition) or ""
            patient = patients.get(pid)
            if patient is None:
                continue
            for pathway in enrolling_pathways(condition, self.definitions.pathways):
                if (pid, pathway.key) in have:
                    continue
                have.add((pid, pathway.key))
                who = practitioner or self._responsible_for(condition)
                cond_ref = f"Condition/{condition['id']}" if condition.get("id") else None
                applied = apply_pathway(
                    pathway, patient, who, medications.get(pid, []), now, "unknown", cond_ref
                )
                work.append(applied.transaction())
                made.append(pathway.key)
        self._write(work)
        if made:
            log.info("care: enrolled %d patient plan(s)", len(made))  # counts only, no PHI
        return made

    def _write(self, bundles: list[dict[str, Any]], redo: Mapping[int, Redo] | None = None) -> None:
        """Commit ``bundles`` as one transaction (one commit for a whole batch); if that fails,
        one by one, so the failure is the offending bundle's alone (and raises: the batch's
        events come again). ``redo``: for a bundle (by ``id``) whose If-Match may fail — a plan
        revision —, how to make it again from what is stored now (:meth:`_write_one`)."""
        if not bundles:
            return
        self._writes += 1
        redo = redo or {}
        if len(bundles) == 1:
            self._write_one(bundles[0], redo.get(id(bundles[0])))
            return
        for i in range(0, len(bundles), WRITE_GROUP):  # bounded: the write lock is shared
            group = bundles[i : i + WRITE_GROUP]
            entries = [entry for b in group for entry in b["entry"]]
            try:
                self.store.transaction(
                    {"resourceType": "Bundle", "type": "transaction", "entry": entries},
                    writer=CARE_WRITER,
                )
            except FhirError:
                log.warning("care: a batch transaction failed; writing its parts one by one")
                for bundle in group:
                    self._write_one(bundle, redo.get(id(bundle)))

    def _write_one(self, bundle: dict[str, Any] | None, redo: Redo | None) -> None:
        """One bundle; when its If-Match fails (someone changed the plan since it was read) and
        it can be made again, re-read and re-apply, at most ``REVISION_RETRIES`` times. Still
        conflicting after that: left to the next evaluation (the plan keeps its old status, so
        the change is found again), logged."""
        for attempt in range(REVISION_RETRIES + 1):
            if bundle is None:
                return  # nothing to do any more (the plan already says so, or is not active)
            try:
                self.store.transaction(bundle, writer=CARE_WRITER)
                return
            except PreconditionFailed:
                if redo is None:
                    raise
                if attempt == REVISION_RETRIES:
                    log.warning("care: a plan revision still conflicted after %d re-reads; "
                                "left to the next evaluation", REVISION_RETRIES)  # fmt: skip
                    return
                bundle = redo()

    def _responsible_for(self, condition: Mapping[str, Any]) -> str:
        for name in ("recorder", "asserter"):
            ref = (condition.get(name) or {}).get("reference", "")
            if ref.startswith("Practitioner/") and exists(self.store, ref):
                return str(ref)
        return self.responsible

    def evaluate_patient(self, pid: str, new: list[dict[str, Any]], now: datetime) -> int:
        """Run the rules of each of the patient's plans; persist alerts and plan revisions.
        Returns the number of alerts opened."""
        return self.evaluate_patients({pid: new}, now)

    def evaluate_patients(
        self,
        touched: Mapping[str, list[dict[str, Any]]],
        now: datetime,
    ) -> int:
        """:meth:`evaluate_patient` for many patients: their records read together, every
        alert and plan revision written in one transaction; a model's scores pass the
        risk-model gate first (:meth:`_gate_models`). Returns the alerts opened."""
        touched, verdicts = self._gate_models(touched)
        reads = BatchRecords(self.store, list(touched))
        plans = {pid: found for pid, found in reads.care_plans().items() if found}
        if not plans:
            return 0
        reads = BatchRecords(self.store, list(plans))
        # New data: the rules that read it need the patient's Observations and open alerts.
        # Follow-ups and visits only serve the overdue-visit rule, which the scheduler's tick
        # (no new data) evaluates with everything; a revision reads its plan's follow-ups.
        scheduled = not any(touched.values())
        recent = reads.recent(now, encounters=scheduled)
        alerts = reads.open_alerts()
        follow = (
            reads.follow_ups([p["id"] for found in plans.values() for p in found])
            if scheduled
            else {}
        )
        work: list[dict[str, Any]] = []
        changes: list[tuple[PlanContext, dict[str, Any], ControlChange]] = []
        opened = 0
        for pid, careplans in plans.items():
            open_keys = open_alert_keys(alerts.get(pid, []))
            for careplan in careplans:
                ctx = self._context(pid, careplan, follow.get(careplan["id"], []), verdicts)
                if ctx is None:
                    continue
                for d in evaluate(ctx, touched[pid], recent.get(pid, []), open_keys, now):
                    if isinstance(d, AlertDecision):
                        work.append(self._alert_bundle(d, ctx.pathway, ctx.practitioner, now))
                        open_keys.add(d.key)
                        opened += 1
                    elif isinstance(d, ControlChange):
                        if not scheduled and d.previous == UNKNOWN and d.status == CONTROLLED:
                            continue  # only a label (plans start as if controlled): the tick's
                        changes.append((ctx, careplan, d))
        # The alerts first, in their own commit: the doctor's stream sees them without waiting
        # for the plan revisions' reads and writes (most of an alerting reading's cost).
        self._write(work)
        revisions = self._revisions(changes, now)
        self._write([bundle for bundle, _ in revisions],
                    {id(bundle): redo for bundle, redo in revisions})  # fmt: skip
        if opened:
            log.info("care: %d alert(s) opened", opened)
        return opened

    def _context(
        self,
        pid: str,
        careplan: dict[str, Any],
        follow_ups: list[dict[str, Any]],
        verdicts: Mapping[str, GateVerdict] | None = None,
    ) -> PlanContext | None:
        pathway = self.definitions.by_url(careplan.get("instantiatesCanonical", [""])[0])
        if pathway is None:
            return None
        return PlanContext(
            patient=f"Patient/{pid}",
            pathway=pathway,
            careplan=careplan,
            follow_ups=tuple(follow_ups),
            practitioner=(careplan.get("author") or {}).get("reference") or self.responsible,
            control_status=control_of(careplan),
            model_verdicts=dict(verdicts or {}),
        )

    def _alert_bundle(
        self, d: AlertDecision, pathway: Pathway, practitioner: str | None, now: datetime
    ) -> dict[str, Any]:
        who = practitioner or self.responsible
        issue = detected_issue(d, pathway.url, who)
        issue_url = urn(d.patient, d.rule.id, issue["identifiedDateTime"], "DetectedIssue")
        key = issue["identifier"][0]["value"]
        return {
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
                    "resource": communication(issue_url, d, who, now),
                    "request": {"method": "POST", "url": "Communication"},
                },
            ],
        }

    def _revisions(
        self, changes: list[tuple[PlanContext, dict[str, Any], ControlChange]], now: datetime
    ) -> list[tuple[dict[str, Any], Redo]]:
        """Each plan revision's transaction (If-Match on the plan version read) and how to make
        it again from the stored plan if that version is no longer the current one."""
        if not changes:
            return []
        pids = sorted({ctx.patient.removeprefix("Patient/") for ctx, _, _ in changes})
        reads = BatchRecords(self.store, pids)
        patients, medications = reads.patients(), reads.medications()
        missing = [careplan["id"] for ctx, careplan, _ in changes if not ctx.follow_ups]
        follow = reads.follow_ups(missing) if missing else {}
        out: list[tuple[dict[str, Any], Redo]] = []
        for ctx, careplan, change in changes:
            pid = ctx.patient.removeprefix("Patient/")
            patient = patients.get(pid)
            if patient is None:
                continue

            job = _RevisionJob(self, ctx, change, patient, medications.get(pid, []), now)
            bundle = job.make(careplan, list(ctx.follow_ups or follow.get(careplan["id"], [])))
            if bundle is not None:
                out.append((bundle, functools.partial(job.redo, careplan["id"])))
                log.info("care: plan revised (%s → %s)", change.previous, change.status)
        return out

    # -- scheduler -------------------------------------------------------------------------
    def tick(self, now: datetime | None = None, between: Callable[[], None] | None = None) -> int:
        """Absence rules for every active plan, then escalation of overdue urgent alerts.
        Returns the number of alerts opened plus escalations sent. ``between`` runs after each
        chunk of patients (the worker handles new commits there, so a tick never holds up an
        alert for longer than one chunk)."""
        now = now or self.clock()
        plans = self.store.search(
            "CarePlan",
            [
                ("identifier", f"{PLAN_ID_SYSTEM}|"),
                ("status", "active"),
                ("_count", "1000"),
            ],  # fmt: skip
        ).resources
        teams: dict[str, str] = {}
        pids = sorted({p["subject"]["reference"].removeprefix("Patient/") for p in plans})
        count = 0
        for i in range(0, len(pids), CHUNK):
            count += self.evaluate_patients({pid: [] for pid in pids[i : i + CHUNK]}, now)
            if between is not None:
                between()
        for p in plans:
            team = (p.get("careTeam") or [{}])[0].get("reference")
            if team:
                teams[p["subject"]["reference"]] = team
        issues = self.store.search(
            "DetectedIssue", [("status", "preliminary"), ("_count", "1000")]
        ).resources
        versions = {i["id"]: (i.get("meta") or {}).get("versionId") for i in issues}
        for body, message in escalations(issues, teams, now):
            put = {"method": "PUT", "url": f"DetectedIssue/{body['id']}"}
            if versions.get(body["id"]):
                put["ifMatch"] = f'W/"{versions[body["id"]]}"'
            try:
                self.store.transaction(
                    {
                        "resourceType": "Bundle",
                        "type": "transaction",
                        "entry": [
                            {"resource": body, "request": put},
                            {
                                "resource": message,
                                "request": {"method": "POST", "url": "Communication"},
                            },
                        ],
                    },
                    writer=CARE_WRITER,
                )
            except PreconditionFailed:  # acknowledged or dismissed meanwhile: the doctor's wins
                log.info("care: an alert changed since it was read; not escalated now")
                continue
            count += 1
        return count
