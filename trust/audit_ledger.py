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
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
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


class AuditLedger:
    def __init__(self, engine: Engine, *, create: bool = True) -> None:
        self.engine = engine
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
        try:
            text = canonical_json(event).decode()
        except (TypeError, ValueError) as exc:
            raise LedgerError(f"audit event is not JSON: {exc}") from None
        body = json.loads(text)
        recorded_at = _stamp(now or dt.datetime.now(dt.UTC))
        with self.engine.begin() as conn:
            bumped = conn.execute(
                update(head_table).where(head_table.c.id == 1).values(seq=head_table.c.seq + 1)
            )
            if bumped.rowcount != 1:
                raise LedgerError("audit ledger head is missing; run `ipjms audit verify`")
            head = conn.execute(
                select(head_table.c.seq, head_table.c.hash).where(head_table.c.id == 1)
            ).one()
            seq, prev_hash = int(head[0]), str(head[1])
            digest = entry_hash(seq, prev_hash, recorded_at, body, patient_pseudonym)
            conn.execute(
                insert(ledger_table).values(
                    seq=seq,
                    recorded_at=recorded_at,
                    prev_hash=prev_hash,
                    hash=digest,
                    patient_pseudonym=patient_pseudonym,
                    event=text,
                )
            )
            conn.execute(update(head_table).where(head_table.c.id == 1).values(hash=digest))
        return LedgerEntry(seq, digest, prev_hash, recorded_at, body, patient_pseudonym)

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
