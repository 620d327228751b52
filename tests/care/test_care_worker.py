"""The care worker on a real store (SQLite, and PostgreSQL when configured): commit events drive
enrolment, rules, plan revisions and alerts; the scheduler runs on a moved clock; bad readings
are refused at the write door and raise nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta

import pytest

from node.care.apply import PLAN_ID_SYSTEM
from node.care.routes import register_reading_checks  # noqa: F401  (registers the door check)
from node.care.worker import CareWorker
from node.store import FhirStore
from servicekit.outcome import BadRequest

from .fixtures import at, bp, definitions, weight

HF_URL = "https://ipjms.example.org/fhir/PlanDefinition/heart-failure"


class Clock:
    def __init__(self) -> None:
        self.now = at(0)

    def __call__(self):  # noqa: ANN204
        return self.now


@pytest.fixture
def running(store: FhirStore) -> Iterator[tuple[CareWorker, Clock]]:
    clock = Clock()
    worker = CareWorker(store, definitions(), clock=clock, tick_seconds=3600)
    worker.start()
    try:
        yield worker, clock
    finally:
        worker.stop()


def wait_for(predicate, timeout: float = 30.0):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def settled(store: FhirStore, worker: CareWorker) -> None:
    """Wait until the worker has handled every commit so far (its stored position is the head;
    its own writes are commits too, so loop until they are handled as well)."""
    wait_for(lambda: store.events.stored_position(worker.name) >= store.events.head())


def _condition(pid: str, code: str = "I50.9") -> dict:
    return {
        "resourceType": "Condition",
        "clinicalStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                 "code": "active"}
            ]
        },
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
    }  # fmt: skip


def _search(store: FhirStore, rtype: str, *params: tuple[str, str]) -> list[dict]:
    return store.search(rtype, list(params)).resources


def _enrolled(store: FhirStore, worker: CareWorker, clock: Clock) -> tuple[str, dict]:
    pid = store.create({"resourceType": "Patient"}).resource["id"]
    store.create(_condition(pid))
    settled(store, worker)
    plan = _search(store, "CarePlan", ("patient", f"Patient/{pid}"))
    return pid, plan[0]


def test_condition_i50_enrols_with_careplan_goals_careteam_and_follow_up(store, running):
    worker, clock = running
    pid, plan = _enrolled(store, worker, clock)
    assert plan["instantiatesCanonical"] == [f"{HF_URL}|2026.1"]
    assert plan["status"] == "active"
    assert plan["identifier"] == [{"system": PLAN_ID_SYSTEM, "value": f"heart-failure/{pid}"}]
    team = store.read("CareTeam", plan["careTeam"][0]["reference"].split("/")[1])
    assert team["participant"][0]["member"]["reference"] == worker.responsible
    assert len(_search(store, "Goal", ("patient", f"Patient/{pid}"))) == 1
    tasks = _search(store, "Task", ("based-on", f"CarePlan/{plan['id']}"))
    assert [t["status"] for t in tasks] == ["requested"]
    assert store.read("PlanDefinition", "heart-failure")["url"] == HF_URL
    store.create(_condition(pid, "I50.1"))  # a second HF condition enrols nobody again
    settled(store, worker)
    assert len(_search(store, "CarePlan", ("patient", f"Patient/{pid}"))) == 1


def test_rising_weights_open_one_alert_and_revise_the_plan(store, running):
    worker, clock = running
    pid, plan = _enrolled(store, worker, clock)
    for day in range(5):  # 70 → 73.4 kg: the rule fires on day 3; day 4 must not re-open
        clock.now = at(day, 1)
        store.create(weight(70.0 + 0.85 * day, at(day), patient=f"Patient/{pid}"))
        settled(store, worker)
        if day == 1:  # unknown → controlled only relabels the plan: written by the scheduler
            assert store.read("CarePlan", plan["id"])["meta"]["versionId"] == "1"
            worker.tick(clock.now)
            assert store.read("CarePlan", plan["id"])["meta"]["versionId"] == "2"
    issues = _search(store, "DetectedIssue", ("patient", f"Patient/{pid}"))
    assert [i["code"]["coding"][0]["code"] for i in issues] == ["hf-weight-gain-3d"]
    assert issues[0]["status"] == "preliminary"
    [message] = _search(store, "Communication", ("patient", f"Patient/{pid}"))
    assert message["recipient"][0]["reference"] == worker.responsible
    revised = store.read("CarePlan", plan["id"])
    # version 2: unknown → controlled (day 1); version 3: controlled → uncontrolled (day 3)
    assert revised["meta"]["versionId"] == "3"
    assert [n["text"].split(":")[0] for n in revised["note"]] == [
        "control status unknown → controlled",
        "control status controlled → uncontrolled",
    ]
    open_tasks = _search(store, "Task", ("based-on", f"CarePlan/{plan['id']}"),
                         ("status", "requested"))  # fmt: skip
    assert [t["restriction"]["period"]["end"] for t in open_tasks] == ["2026-12-11T09:00:00Z"]


def test_bad_readings_are_refused_at_the_door_and_raise_nothing(store, running):
    worker, clock = running
    pid, _ = _enrolled(store, worker, clock)
    before = store.events.head()
    with pytest.raises(BadRequest, match="900 is not a plausible value"):
        store.create(bp(900, 80, at(), patient=f"Patient/{pid}"))
    with pytest.raises(BadRequest, match="'mmHg' is not an accepted UCUM unit"):
        store.create(bp(186, 112, at(), patient=f"Patient/{pid}", unit="mmHg"))
    assert store.events.head() == before
    assert _search(store, "Observation", ("patient", f"Patient/{pid}")) == []
    assert _search(store, "DetectedIssue", ("patient", f"Patient/{pid}")) == []


def test_moved_clock_missing_weights_overdue_follow_up_and_escalation(store, running):
    worker, clock = running
    pid, plan = _enrolled(store, worker, clock)
    settled(store, worker)
    assert worker.tick(at(1)) == 0
    opened = worker.tick(at(2, 1))  # daily weight: 1 day + 1 day grace passed
    assert opened == 1
    codes = lambda: sorted(  # noqa: E731
        i["code"]["coding"][0]["code"]
        for i in _search(store, "DetectedIssue", ("patient", f"Patient/{pid}"))
    )
    assert codes() == ["hf-weight-missing"]
    due = at(0) + timedelta(days=90)  # routine follow-up in 3 months
    worker.tick(due + timedelta(days=4))
    assert codes() == ["follow-up-overdue", "hf-weight-missing"]
    # hf-weight-missing has no acknowledge-by: nothing escalates; follow-up-overdue does (P2D)
    escalated = worker.tick(due + timedelta(days=7))
    assert escalated == 1
    team = plan["careTeam"][0]["reference"]
    to_team = _search(store, "Communication", ("recipient", team))
    assert len(to_team) == 1 and to_team[0]["priority"] == "stat"
    assert worker.tick(due + timedelta(days=8)) == 0  # escalated once


def test_replaying_handled_events_changes_nothing(store, running):
    """After a crash between the worker's writes and its stored position, the same events come
    again: no second plan, no second alert."""
    worker, clock = running
    pid, plan = _enrolled(store, worker, clock)
    for day in range(4):
        clock.now = at(day, 1)
        store.create(weight(70.0 + 0.85 * day, at(day), patient=f"Patient/{pid}"))
        settled(store, worker)
    counts = store.counts()
    worker.stop()  # the replay runs here, not racing the worker thread
    clock.now = at(3, 1)
    worker.handle(store.events.read_since(0))
    assert store.counts() == counts


class _FailsOnce(CareWorker):
    """A worker whose next evaluation raises once armed (a database hiccup, a bug in a batch)."""

    armed = False
    failed = 0

    def evaluate_patients(self, touched, now):  # noqa: ANN001, ANN201
        if self.armed:
            self.armed = False
            self.failed += 1
            raise RuntimeError("injected failure")
        return super().evaluate_patients(touched, now)


def test_a_failed_batch_is_handled_again_not_skipped(store: FhirStore) -> None:
    clock = Clock()
    worker = _FailsOnce(store, definitions(), clock=clock, tick_seconds=3600)
    worker.start()
    try:
        pid, _ = _enrolled(store, worker, clock)
        for day, kg in ((0, 70.0), (1, 71.0)):
            clock.now = at(day, 1)
            store.create(weight(kg, at(day), patient=f"Patient/{pid}"))
            settled(store, worker)
        worker.armed = True
        clock.now = at(3, 1)
        store.create(weight(72.5, at(3), patient=f"Patient/{pid}"))  # its handling fails once
        issues = wait_for(lambda: _search(store, "DetectedIssue", ("patient", f"Patient/{pid}")))
        assert worker.failed == 1  # and nothing later carried the alert: the replay did
        assert [i["code"]["coding"][0]["code"] for i in issues] == ["hf-weight-gain-3d"]
        settled(store, worker)
    finally:
        worker.stop()


def test_a_worker_with_a_long_poll_stops_and_stores_its_position(store: FhirStore) -> None:
    """``stop`` ends the loop's wait itself: a worker polling the log once a minute (its
    process is woken after each commit instead) still stops at once, its thread ended and
    what it handled stored — not left running after the 10 s join gives up."""
    clock = Clock()
    worker = CareWorker(store, definitions(), clock=clock, tick_seconds=3600, poll_seconds=60)
    worker.start()
    store.create({"resourceType": "Patient"})
    worker.wake()  # as the worker process's parent does after a commit
    wait_for(lambda: store.events.stored_position(worker.name) == store.events.head())
    worker.stop()
    assert worker._thread is not None and not worker._thread.is_alive()
