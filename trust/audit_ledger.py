"""The append-only, hash-chained audit ledger of one service (SQLite or PostgreSQL).

Two tables, created if absent (no Alembic needed, so any service can host a ledger):

- ``audit_ledger``: seq (primary key, 1, 2, …), recorded_at, prev_hash, hash, patient_pseudonym
  (indexed: a patient's disclosure list), event (the AuditEvent as canonical JSON text);
- ``audit_ledger_head``: one row holding the last seq and hash.

``append`` first increments the head row (``UPDATE … SET seq = seq + 1``): on PostgreSQL that
row lock serialises appenders until commit, on SQLite the UPDATE takes the database write lock;
so seq and prev_hash stay consistent under concurrent appends from many threads or processes.
The head also makes deleting the newest entries detectable. Nothing here updates or deletes an
entry.

**Group commit.** Appends from several threads of one process are written together: the first
caller to find no write in progress becomes the leader and writes every append queued so far in
one transaction (one head update, one multi-row insert, one commit); the others wait until the
transaction holding their entry has committed. ``append`` still returns only once its entry is
durable, in the order the appends were queued, so nothing a caller acknowledges can be lost;
what changes is that N concurrent appends cost one commit and one head-row lock instead of N
(issue 19: the coordinator's three appends per envelope were the longest wait of its threads).

**In the caller's transaction.** ``append_in`` chains an entry inside a transaction the caller
holds on the ledger's database (the coordinator's queue state changes): the change and its audit
entry are durable with that one commit, or both are gone.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from trust.canonical_json import canonical_json
from trust.hashchain import GENESIS_HASH, ChainRow, VerifyReport, entry_hash, verify_chain

__all__ = ["AuditLedger", "LedgerEntry", "LedgerError", "VerifyReport"]

metadata = MetaData()
ledger_table = Table(
    "audit_ledger",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("recorded_at", String(32), nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False, unique=True),
    Column("patient_pseudonym", String(128), nullable=True, index=True),
    Column("event", Text, nullable=False),
)
head_table = Table(
    "audit_ledger_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", Integer, nullable=False),
    Column("hash", String(64), nullable=False),
)
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
# Built once (SQLAlchemy then reuses their compiled form without rebuilding a cache key): the
# head moved and read in one statement (UPDATE … RETURNING: PostgreSQL, SQLite ≥ 3.35).
_BUMP_HEAD = (
    update(head_table)
    .where(head_table.c.id == 1)
    .values(seq=head_table.c.seq + bindparam("n", type_=Integer))
    .returning(head_table.c.seq, head_table.c.hash)
)
_SET_HEAD_HASH = update(head_table).where(head_table.c.id == 1).values(hash=bindparam("head_hash"))
_INSERT_ENTRY = insert(ledger_table)


class LedgerError(Exception):
    """The ledger cannot be used (missing head, bad event)."""


@dataclass(frozen=True)
class LedgerEntry:
    seq: int
    hash: str
    prev_hash: str
    recorded_at: str  # ISO 8601 UTC with microseconds, e.g. 2026-01-02T03:04:05.000006Z
    event: dict[str, Any]
    patient_pseudonym: str | None = None


def _stamp(value: dt.datetime | str) -> str:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return value.astimezone(dt.UTC).strftime(_TIME_FORMAT)


@dataclass(frozen=True)
class _Item:
    text: str  # canonical JSON of the event, as stored
    body: dict[str, Any]
    recorded_at: str
    patient_pseudonym: str | None


def _prepared(
    event: Mapping[str, Any], patient_pseudonym: str | None, now: dt.datetime | None
) -> _Item:
    """The caller's own checks, before it queues: a bad event fails only its caller."""
    try:
        text = canonical_json(event).decode()
    except (TypeError, ValueError) as exc:
        raise LedgerError(f"audit event is not JSON: {exc}") from None
    return _Item(text, json.loads(text), _stamp(now or dt.datetime.now(dt.UTC)), patient_pseudonym)


class _Pending:
    """One queued append and, once its transaction ended, its entry or the error."""

    def __init__(self, item: _Item) -> None:
        self.item = item
        self.done = False
        self.entry: LedgerEntry | None = None
        self.error: BaseException | None = None

    def succeed(self, entry: LedgerEntry) -> None:
        self.entry, self.done = entry, True

    def fail(self, error: BaseException) -> None:
        self.error, self.done = error, True

    def outcome(self) -> LedgerEntry:
        if self.error is not None:
            raise self.error
        assert self.entry is not None
        return self.entry


class AuditLedger:
    def __init__(self, engine: Engine, *, create: bool = True) -> None:
        self.engine = engine
        self._turn = threading.Condition()
        self._queue: list[_Pending] = []
        self._writing = False
        if create:
            self._create()

    def exists(self) -> bool:
        names = set(inspect(self.engine).get_table_names())
        return {"audit_ledger", "audit_ledger_head"} <= names

    def _create(self) -> None:
        for attempt in range(3):
            try:
                metadata.create_all(self.engine, checkfirst=True)
                break
            except (IntegrityError, ProgrammingError, OperationalError):
                # another process created the tables between our check and CREATE
                if attempt == 2:
                    raise
        with self.engine.connect() as conn:
            has_head = conn.execute(select(head_table.c.id)).first() is not None
            has_rows = conn.execute(select(ledger_table.c.seq).limit(1)).first() is not None
        if has_head or has_rows:
            return  # a ledger whose head is missing is reported by verify(), never re-created
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(head_table).values(id=1, seq=0, hash=GENESIS_HASH))
        except IntegrityError:
            pass  # created concurrently

    def append(
        self,
        event: Mapping[str, Any],
        *,
        patient_pseudonym: str | None = None,
        now: dt.datetime | None = None,
    ) -> LedgerEntry:
        """Append one event; returns once it is committed (group-committed with the appends
        other threads of this process make meanwhile, see the module docstring)."""
        slot = _Pending(_prepared(event, patient_pseudonym, now))
        with self._turn:
            self._queue.append(slot)
            while not slot.done:
                if not self._writing:
                    batch, self._queue = self._queue, []
                    self._writing = True
                    break
                self._turn.wait()
            else:
                return slot.outcome()
        try:
            self._write_batch(batch)
        finally:
            for pending in batch:  # interrupted (BaseException): no caller waits for ever
                if not pending.done:
                    pending.fail(LedgerError("the audit ledger write was interrupted"))
            with self._turn:
                self._writing = False
                self._turn.notify_all()
        return slot.outcome()

    def append_in(
        self,
        conn: Connection,
        event: Mapping[str, Any],
        *,
        patient_pseudonym: str | None = None,
        now: dt.datetime | None = None,
    ) -> LedgerEntry:
        """Append one event inside the caller's open transaction on this ledger's database:
        it is durable exactly when that transaction commits, and gone if it rolls back (with
        the head it moved). For a write that must be audited with the same commit — one
        durable commit instead of two, and never the one without the other. The head row's
        lock (PostgreSQL) or the write lock (SQLite) orders it with every other append."""
        return _chain_into(conn, [_prepared(event, patient_pseudonym, now)])[0]

    def _write_batch(self, batch: list[_Pending]) -> None:
        try:
            entries = self._append_all([p.item for p in batch])
        except Exception as exc:
            if len(batch) == 1:
                batch[0].fail(exc)
                return
            # Keep one caller's failure its own: write the batch's entries one at a time.
            for pending in batch:
                try:
                    pending.succeed(self._append_all([pending.item])[0])
                except Exception as single:
                    pending.fail(single)
            return
        for pending, entry in zip(batch, entries, strict=True):
            pending.succeed(entry)

    def _append_all(self, items: list[_Item]) -> list[LedgerEntry]:
        """One transaction: the head moved by len(items), the entries chained in order."""
        with self.engine.begin() as conn:
            return _chain_into(conn, items)

    def entries(
        self,
        *,
        patient_pseudonym: str | None = None,
        since: dt.datetime | str | None = None,
        limit: int | None = None,
        after_seq: int | None = None,
    ) -> list[LedgerEntry]:
        """Entries in ledger order, optionally one patient's, recorded at/after ``since``."""
        query = select(ledger_table).order_by(ledger_table.c.seq)
        if patient_pseudonym is not None:
            query = query.where(ledger_table.c.patient_pseudonym == patient_pseudonym)
        if since is not None:
            query = query.where(ledger_table.c.recorded_at >= _stamp(since))
        if after_seq is not None:
            query = query.where(ledger_table.c.seq > after_seq)
        if limit is not None:
            query = query.limit(max(0, limit))
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            LedgerEntry(
                r["seq"],
                r["hash"],
                r["prev_hash"],
                r["recorded_at"],
                json.loads(r["event"]),
                r["patient_pseudonym"],
            )
            for r in rows
        ]

    def head(self) -> tuple[int, str]:
        """(seq, hash) of the newest entry, as the head row records it ((0, genesis) if empty)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(head_table.c.seq, head_table.c.hash).where(head_table.c.id == 1)
            ).first()
        if row is None:
            raise LedgerError("audit ledger head is missing; run `ipjms audit verify`")
        return int(row[0]), str(row[1])

    def hashes(self) -> list[tuple[int, str]]:
        """(seq, hash) of every entry in order: what signed checkpoints are compared with."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(ledger_table.c.seq, ledger_table.c.hash).order_by(ledger_table.c.seq)
            ).all()
        return [(int(r[0]), str(r[1])) for r in rows]

    def count(self) -> int:
        with self.engine.connect() as conn:
            head = conn.execute(select(head_table.c.seq).where(head_table.c.id == 1)).first()
        return int(head[0]) if head else 0

    def verify(self) -> VerifyReport:
        """Walk the whole chain; names the first entry edited, deleted or reordered."""
        with self.engine.connect() as conn:
            head = conn.execute(
                select(head_table.c.seq, head_table.c.hash).where(head_table.c.id == 1)
            ).first()
            result = conn.execute(select(ledger_table).order_by(ledger_table.c.seq)).mappings()
            rows: list[ChainRow] = []
            for r in result:
                try:
                    event = json.loads(r["event"])
                except ValueError:
                    return VerifyReport(False, len(rows), r["seq"], "edited (event is not JSON)")
                rows.append(
                    ChainRow(
                        r["seq"],
                        r["prev_hash"],
                        r["recorded_at"],
                        event,
                        r["hash"],
                        r["patient_pseudonym"],
                    )
                )
        if head is None:
            if not rows:
                return VerifyReport(True, 0)
            return VerifyReport(False, len(rows), None, "the ledger head row is missing")
        return verify_chain(rows, head=(int(head[0]), str(head[1])))


def _chain_into(conn: Connection, items: list[_Item]) -> list[LedgerEntry]:
    """In ``conn``'s transaction: the head moved by len(items), the entries chained in order."""
    n = len(items)
    head = conn.execute(_BUMP_HEAD, {"n": n}).first()
    if head is None:
        raise LedgerError("audit ledger head is missing; run `ipjms audit verify`")
    seq, prev_hash = int(head[0]) - n, str(head[1])
    entries: list[LedgerEntry] = []
    for item in items:
        seq += 1
        digest = entry_hash(seq, prev_hash, item.recorded_at, item.body, item.patient_pseudonym)
        entries.append(
            LedgerEntry(seq, digest, prev_hash, item.recorded_at, item.body, item.patient_pseudonym)
        )
        prev_hash = digest
    conn.execute(
        _INSERT_ENTRY,
        [
            {
                "seq": e.seq,
                "recorded_at": e.recorded_at,
                "prev_hash": e.prev_hash,
                "hash": e.hash,
                "patient_pseudonym": e.patient_pseudonym,
                "event": item.text,
            }
            for e, item in zip(entries, items, strict=True)
        ],
    )
    conn.execute(_SET_HEAD_HASH, {"head_hash": prev_hash})
    return entries
