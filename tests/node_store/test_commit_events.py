"""The store's one write door and its commit events, on SQLite and PostgreSQL: one event per
committed change in commit order, none for a refused or rolled-back write, subscribers that
catch up after a restart (all missed events, once), and positions that become visible strictly in
order while writers run concurrently."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from node.store import CommitEvent, FhirStore, UnitOfWork, parse_bundle
from servicekit.outcome import BadRequest, PreconditionFailed, Unprocessable


def _patient(family: str, rid: str | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": "Patient", "name": [{"family": family}]}
    if rid:
        res["id"] = rid
    return res


def _one_patient_entries() -> list[Any]:
    """The parsed entries of a transaction that creates one Patient."""
    return parse_bundle(
        {"resourceType": "Bundle", "type": "transaction",
         "entry": [{"resource": _patient("Roe"), "request": {"method": "POST", "url": "Patient"}}]},
        "transaction",
    ).entries  # fmt: skip


def _seen(events: list[CommitEvent]) -> list[tuple[str, int, str, str]]:
    return [(e.reference, e.version_id, e.interaction, e.writer) for e in events]


class Collector:
    """A subscriber that keeps what it was given."""

    def __init__(self) -> None:
        self.events: list[CommitEvent] = []
        self.calls = 0

    def __call__(self, events: list[CommitEvent]) -> None:
        self.calls += 1
        self.events += events


def test_each_committed_change_is_one_event_in_commit_order(store: FhirStore) -> None:
    got = Collector()
    store.events.subscribe("test", got)
    p = store.create(_patient("Ng"), writer="doctor:ann").resource
    store.update("Patient", p["id"], {**p, "gender": "female"}, writer="doctor:ann")
    store.update("Patient", p["id"], {**p, "gender": "female"}, writer="doctor:ann")  # same
    tx = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:o1", "resource": _patient("Lee"),
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": _patient("Kim", "k1"), "request": {"method": "PUT", "url": "Patient/k1"}},
            {"request": {"method": "DELETE", "url": f"Patient/{p['id']}"}},
        ],
    }  # fmt: skip
    response = store.transaction(tx, writer="feed:test")
    created = response["entry"][0]["response"]["location"].split("/")[1]
    pid = f"Patient/{p['id']}"
    assert _seen(got.events) == [
        (pid, 1, "create", "doctor:ann"),
        (pid, 2, "update", "doctor:ann"),  # the unchanged update made no version, no event
        (pid, 3, "delete", "feed:test"),  # transaction order: DELETE, POST, PUT
        (f"Patient/{created}", 1, "create", "feed:test"),
        ("Patient/k1", 1, "create", "feed:test"),
    ]
    assert [e.position for e in got.events] == [1, 2, 3, 4, 5]
    assert [e.commit_seq for e in got.events] == [1, 2, 3, 3, 3]  # one commit per write
    assert store.events.read_since(0) == got.events  # the durable log says the same
    assert store.events.head() == 5


def test_refused_and_rolled_back_writes_publish_nothing(store: FhirStore) -> None:
    got = Collector()
    store.events.subscribe("test", got)
    p = store.create(_patient("Ng")).resource
    bad_tx = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": _patient("Lee"), "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                          "subject": {"reference": "Patient/missing"}},
             "request": {"method": "POST", "url": "Observation"}},
        ],
    }  # fmt: skip
    with pytest.raises(Unprocessable):
        store.transaction(bad_tx)
    with pytest.raises(PreconditionFailed):
        store.update("Patient", p["id"], {**p, "gender": "male"}, if_match='W/"7"')
    with pytest.raises(BadRequest):
        store.create({"resourceType": "Patient", "gender": "sometimes"})
    entries = _one_patient_entries()

    def fails_after_writing(uow: UnitOfWork) -> None:
        uow.apply(entries)
        raise RuntimeError("the caller's own step failed")

    with pytest.raises(RuntimeError):
        store.write(fails_after_writing)
    assert store.counts() == {"Patient": 1}
    assert _seen(got.events) == [(f"Patient/{p['id']}", 1, "create", "unnamed")]
    assert store.events.read_since(0) == got.events
    store.create(_patient("After"))
    assert [e.position for e in got.events] == [1, 2]  # the rolled-back ones left no gap


def test_a_commit_listener_is_told_once_per_commit_and_never_for_a_rollback(
    store: FhirStore,
) -> None:
    """``on_commit``: what wakes the care worker process after a commit in its parent."""
    told: list[int] = []
    remove = store.events.on_commit(lambda: told.append(store.events.head()))
    store.create(_patient("Ng"))
    with pytest.raises(BadRequest):
        store.create({"resourceType": "Patient", "gender": "sometimes"})
    entries = _one_patient_entries()

    def fails_after_writing(uow: UnitOfWork) -> None:
        uow.apply(entries)
        raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        store.write(fails_after_writing)
    store.write(lambda uow: uow.apply(entries))  # one commit of one change
    assert told == [1, 2]  # after each commit, with the change already in the log

    def broken() -> None:
        raise RuntimeError("a listener that fails")

    remove_broken = store.events.on_commit(broken)
    store.create(_patient("Kim"))  # the write stands; the other listener is still told
    assert told == [1, 2, 3] and store.events.head() == 3
    remove()
    remove_broken()
    store.create(_patient("Lee"))
    assert told == [1, 2, 3]


def test_a_restarted_subscriber_gets_every_missed_event_once(store: FhirStore) -> None:
    first = Collector()
    sub = store.events.subscribe("care", first)
    store.create(_patient("A"))
    store.create(_patient("B"))
    sub.close()  # the subscriber goes down; writes go on
    store.transaction(
        {"resourceType": "Bundle", "type": "transaction",
         "entry": [{"resource": _patient(n), "request": {"method": "POST", "url": "Patient"}}
                   for n in ("C", "D")]}
    )  # fmt: skip
    store.create(_patient("E"))
    # a new process: a fresh store object on the same database, the subscriber under its name
    restarted = FhirStore(store.engine)
    again = Collector()
    restarted.events.subscribe("care", again)
    assert [e.position for e in first.events] == [1, 2]
    assert [e.position for e in again.events] == [3, 4, 5]  # all it missed, nothing twice
    restarted.create(_patient("F"))  # and from now on, live
    assert [e.position for e in again.events] == [3, 4, 5, 6]
    assert restarted.events.stored_position("care") == 6


def test_a_failing_handler_gets_the_same_events_again(store: FhirStore) -> None:
    delivered: list[int] = []
    fail = {"on": True}

    def handler(events: list[CommitEvent]) -> None:
        if fail["on"]:
            raise RuntimeError("not now")
        delivered.extend(e.position for e in events)

    sub = store.events.subscribe("flaky", handler)
    store.create(_patient("A"))  # the write succeeds although its subscriber failed
    assert delivered == [] and store.events.stored_position("flaky") == 0
    fail["on"] = False
    store.create(_patient("B"))
    assert delivered == [1, 2]
    sub.poll()
    assert delivered == [1, 2]


def test_a_handler_that_writes_sees_its_own_write_after_returning(store: FhirStore) -> None:
    seen: list[tuple[int, str]] = []

    def handler(events: list[CommitEvent]) -> None:
        for e in events:
            seen.append((e.position, e.writer))
            if e.writer != "care":  # react once, writing through the same door
                store.create(_patient("Reaction"), writer="care")

    store.events.subscribe("care", handler)
    store.create(_patient("A"), writer="doctor:ann")
    assert seen == [(1, "doctor:ann"), (2, "care")]


def test_the_position_can_commit_with_the_subscribers_own_writes(store: FhirStore) -> None:
    """auto_commit=False: the subscriber records its position inside its own unit of work."""
    store.create(_patient("A"))
    events = store.events.read_since(0)

    def react(uow: UnitOfWork) -> None:
        uow.commit_position("care", events[-1].position)
        raise RuntimeError("its write failed")

    with pytest.raises(RuntimeError):
        store.write(react)
    assert store.events.stored_position("care") == 0  # rolled back with the failed write
    store.write(lambda uow: uow.commit_position("care", events[-1].position), writer="care")
    assert store.events.stored_position("care") == 1


def test_a_later_writer_waits_until_the_earlier_commit_log_append_commits(
    store: FhirStore,
) -> None:
    """The gap-safety rule: while a transaction holds positions it has not committed yet, no
    other writer can take (and commit) a later one."""
    store.create(_patient("A"))
    holder = store.engine.connect()
    tx = holder.begin()
    from node.store.commit_log import append
    from node.store.writes import NewVersion, now_utc

    held = append(holder, [NewVersion("Patient", "held", 1, now_utc(), False, {}, False)], "test")
    assert [e.position for e in held] == [2]
    done = threading.Event()
    positions: list[int] = []

    def later_writer() -> None:
        store.create(_patient("B"))
        positions.append(store.events.head())
        done.set()

    thread = threading.Thread(target=later_writer)
    thread.start()
    assert not done.wait(1.0)  # it must wait for the open transaction holding position 2
    assert [e.position for e in store.events.read_since(0)] == [1]
    tx.rollback()  # the held position is given back: no gap
    holder.close()
    thread.join(30)
    assert done.is_set()
    assert [e.position for e in store.events.read_since(0)] == [1, 2]
    assert store.events.read_since(1)[0].resource_id != "held"


def test_concurrent_writers_positions_visible_strictly_in_order(store: FhirStore) -> None:
    writers, per_writer = 4, 6
    stop = threading.Event()
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            seen = [e.position for e in store.events.read_since(0, limit=10_000)]
            if seen != list(range(1, len(seen) + 1)):
                problems.append(f"gap or disorder: {seen}")
                return

    def writer(n: int) -> None:
        for i in range(per_writer):
            store.transaction(
                {"resourceType": "Bundle", "type": "transaction",
                 "entry": [{"resource": _patient(f"W{n}-{i}-{k}"),
                            "request": {"method": "POST", "url": "Patient"}} for k in range(2)]},
                writer=f"w{n}",
            )  # fmt: skip

    got = Collector()
    store.events.subscribe("all", got)
    watcher = threading.Thread(target=reader)
    watcher.start()
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    stop.set()
    watcher.join(30)
    assert not problems, problems[0]
    total = writers * per_writer * 2
    log = store.events.read_since(0, limit=10_000)
    assert [e.position for e in log] == list(range(1, total + 1))
    for seq in {e.commit_seq for e in log}:  # a commit's changes are consecutive
        mine = [e.position for e in log if e.commit_seq == seq]
        assert mine == list(range(mine[0], mine[0] + 2))
    assert got.events == log  # the in-process subscriber got each once, in order
