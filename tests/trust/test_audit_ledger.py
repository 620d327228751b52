"""Audit ledger (must-show 4): tampering found by `ipjms audit verify`, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import subprocess
import threading
import time
from pathlib import Path

import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from sqlalchemy import event as sa_event
from sqlalchemy import text

from deploy.launcher import ipjms_command
from servicekit.storage import make_engine
from trust import audit_events
from trust.audit_ledger import AuditLedger, LedgerError
from trust.hashchain import GENESIS_HASH, ChainRow, entry_hash, verify_chain


def _event(i: int, pseudonym: str = "p1") -> dict[str, object]:
    return audit_events.disclosure(
        sender="hosp-a",
        recipient="clinic-b",
        purpose="TREAT",
        classes=["Condition"],
        patient_pseudonym=pseudonym,
        observer="coordinator",
        envelope_id=f"env-{i}",
    )


def _ledger(url: str, n: int) -> AuditLedger:
    ledger = AuditLedger(make_engine(url))
    for i in range(n):
        ledger.append(_event(i, "p1" if i % 2 else "p2"), patient_pseudonym="p1" if i % 2 else "p2")
    return ledger


def _verify_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ipjms_command("audit", "verify", *args), capture_output=True, text=True, timeout=120
    )


# --- pure chain ---------------------------------------------------------------------------------


def _chain(n: int) -> list[ChainRow]:
    rows, prev = [], GENESIS_HASH
    for seq in range(1, n + 1):
        event = {"n": seq}
        h = entry_hash(seq, prev, f"t{seq}", event)
        rows.append(ChainRow(seq, prev, f"t{seq}", event, h))
        prev = h
    return rows


def test_chain_names_first_bad_entry() -> None:
    rows = _chain(6)
    assert verify_chain(rows, head=(6, rows[-1].hash)).ok
    edited = list(rows)
    edited[2] = ChainRow(3, rows[2].prev_hash, "t3", {"n": 99}, rows[2].hash)
    report = verify_chain(edited)
    assert (report.first_bad_seq, report.problem.split()[0]) == (3, "edited")
    deleted = rows[:3] + rows[4:]
    report = verify_chain(deleted)
    assert (report.first_bad_seq, report.problem.split()[0]) == (4, "deleted")
    r3, r4 = rows[2], rows[3]
    swapped = rows[:2] + [
        ChainRow(3, r4.prev_hash, r4.recorded_at, r4.event, r4.hash),
        ChainRow(4, r3.prev_hash, r3.recorded_at, r3.event, r3.hash),
    ] + rows[4:]  # fmt: skip
    report = verify_chain(swapped)
    assert (report.first_bad_seq, report.problem.split()[0]) == (3, "reordered")
    report = verify_chain(rows[:5], head=(6, rows[-1].hash))
    assert (report.first_bad_seq, report.problem.split()[0]) == (6, "deleted")


# --- the ledger on real databases ---------------------------------------------------------------


def test_append_entries_and_patient_list(db_url: str) -> None:
    ledger = _ledger(db_url, 6)
    assert [e.seq for e in ledger.entries()] == [1, 2, 3, 4, 5, 6]
    mine = ledger.entries(patient_pseudonym="p1")
    assert [e.seq for e in mine] == [2, 4, 6]
    assert mine[0].event["entity"][0]["what"]["identifier"]["value"] == "p1"
    assert [e.seq for e in ledger.entries(limit=2)] == [1, 2]
    assert ledger.entries(since=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)) == []
    assert len(ledger.entries(since=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))) == 6
    assert ledger.count() == 6
    report = ledger.verify()
    assert report.ok and report.checked == 6
    # a second handle on the same database continues the chain
    again = AuditLedger(make_engine(db_url))
    assert again.append({"resourceType": "AuditEvent", "x": 1}).seq == 7
    assert again.verify().ok
    with pytest.raises(LedgerError):
        again.append({"bad": {1, 2}})  # type: ignore[dict-item]


def test_concurrent_appends_keep_the_chain(db_url: str) -> None:
    ledger = AuditLedger(make_engine(db_url))
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            own = AuditLedger(make_engine(db_url))
            for i in range(15):
                own.append({"worker": k, "i": i})
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [e.seq for e in ledger.entries()] == list(range(1, 91))
    assert ledger.verify().ok


def test_concurrent_appends_of_one_process_share_a_commit(db_url: str) -> None:
    """Group commit (issue 19): appends queued while a write is in progress go out together in
    the next transaction — here 1 + 9 appends in 2 commits — each returning only after its own
    entry committed, chained in queue order; a caller's bad event fails that caller alone."""
    engine = make_engine(db_url)
    ledger = AuditLedger(engine)
    commits: list[int] = []
    first_insert, release = threading.Event(), threading.Event()

    @sa_event.listens_for(engine, "commit")
    def _count(_conn: object) -> None:
        commits.append(1)

    @sa_event.listens_for(engine, "before_cursor_execute")
    def _hold(_c: object, _cur: object, statement: str, *_a: object) -> None:
        if statement.startswith("INSERT INTO audit_ledger ") and not first_insert.is_set():
            first_insert.set()
            release.wait(30)  # the first transaction stays open while the others queue

    results: dict[int, int] = {}
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            results[k] = ledger.append({"worker": k}).seq
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    leader = threading.Thread(target=worker, args=(0,))
    leader.start()
    assert first_insert.wait(30)
    followers = [threading.Thread(target=worker, args=(k,)) for k in range(1, 10)]
    for t in followers:
        t.start()
    deadline = time.monotonic() + 30
    while len(ledger._queue) < 9 and time.monotonic() < deadline:  # all nine queued
        time.sleep(0.01)
    assert not results  # nobody returned before its entry committed
    with pytest.raises(LedgerError, match="not JSON"):
        ledger.append({"bad": {1, 2}})  # type: ignore[dict-item]
    release.set()
    for t in [leader, *followers]:
        t.join(30)
    assert errors == []
    assert len(commits) == 2  # 1 + 9 appends, two transactions (one per append before)
    assert sorted(results.values()) == list(range(1, 11))
    assert results[0] == 1
    assert ledger.verify().ok
    assert [e.event["worker"] for e in ledger.entries()][0] == 0


@pytest.mark.parametrize(
    ("sql", "bad_seq", "word"),
    [
        (
            "UPDATE audit_ledger SET event = replace(event, 'clinic-b', 'clinic-x') WHERE seq = 3",
            3,
            "edited",
        ),
        ("UPDATE audit_ledger SET patient_pseudonym = 'p9' WHERE seq = 2", 2, "edited"),
        ("DELETE FROM audit_ledger WHERE seq = 3", 3, "deleted"),
        ("DELETE FROM audit_ledger WHERE seq = 1", 1, "deleted"),
        ("DELETE FROM audit_ledger WHERE seq = 5", 5, "deleted"),
        (
            "UPDATE audit_ledger SET seq = -1 WHERE seq = 3;"
            "UPDATE audit_ledger SET seq = 3 WHERE seq = 4;"
            "UPDATE audit_ledger SET seq = 4 WHERE seq = -1",
            3,
            "reordered",
        ),
    ],
    ids=["edit-event", "edit-pseudonym", "delete-middle", "delete-first", "delete-last", "reorder"],
)
def test_tampering_is_named_by_the_cli(db_url: str, sql: str, bad_seq: int, word: str) -> None:
    ledger = _ledger(db_url, 5)
    ok = _verify_cli("--db", db_url)
    assert ok.returncode == 0 and "ok, 5 entries" in ok.stdout, ok.stdout + ok.stderr
    with ledger.engine.begin() as conn:
        for statement in sql.split(";"):
            assert conn.execute(text(statement)).rowcount == 1
    res = _verify_cli("--db", db_url)
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"entry {bad_seq}: {word}" in res.stdout, res.stdout


def test_cli_data_dir_service_and_missing_ledger(tmp_path: Path) -> None:
    from servicekit.storage import sqlite_url

    _ledger(sqlite_url(tmp_path, "coordinator"), 3)
    res = _verify_cli("--data-dir", str(tmp_path), "--service", "coordinator")
    assert res.returncode == 0 and "ok, 3 entries" in res.stdout
    missing = _verify_cli("--data-dir", str(tmp_path), "--service", "nothing")
    assert missing.returncode == 2 and "no database" in missing.stderr
    assert not (tmp_path / "nothing.db").exists()
    assert _verify_cli().returncode == 2


def test_every_builder_is_a_valid_r4_audit_event(tmp_path: Path) -> None:
    events = [
        audit_events.disclosure(
            sender="hosp-a", recipient="clinic-b", purpose="TREAT", classes=["Condition"],
            patient_pseudonym="ab12", observer="coordinator", envelope_id="e-1",
            consent_ref="Consent/1", user="dr-who",
        ),
        audit_events.consent_change(
            patient_pseudonym="ab12", consent_id="c1", action="D", actor="patient-1",
            observer="consent",
        ),
        audit_events.break_glass(
            user="dr-who", org="hosp-a", recipient="clinic-b", patient_pseudonym="ab12",
            reason="unconscious, suspected anaphylaxis", classes=["AllergyIntolerance"],
            observer="coordinator",
        ),
        audit_events.login_failure(username="nurse-1", observer="hosp-a", source_address="::1"),
        audit_events.training_run(
            run_id="run-1", observer="authority", nodes=["hosp-a", "clinic-b"], model="readmit-30d",
            epsilon=1.0, delta=1e-5,
        ),
        audit_events.routing_decision(
            permit=False, sender="hosp-a", recipient="clinic-b", purpose="TREAT",
            classes=["Condition"], patient_pseudonym="ab12", observer="coordinator",
            reason="no permit for Condition", consent_refs=["Consent/2"],
        ),
    ]  # fmt: skip
    ledger = AuditLedger(make_engine(f"sqlite:///{tmp_path / 'a.db'}"))
    for event in events:
        AuditEvent.model_validate(event)  # raises on an invalid R4 AuditEvent
        ledger.append(event, patient_pseudonym=audit_events.patient_pseudonym_of(event))
    assert events[2]["purposeOfEvent"][0]["coding"][0]["code"] == "ETREAT"  # type: ignore[index]
    assert events[5]["outcome"] == "8"
    assert [e.seq for e in ledger.entries(patient_pseudonym="ab12")] == [1, 2, 3, 6]
    with pytest.raises(ValueError, match="reason"):
        audit_events.break_glass(
            user="u", org="o", recipient="r", patient_pseudonym="p", reason=" ", classes=[],
            observer="o",
        )  # fmt: skip
