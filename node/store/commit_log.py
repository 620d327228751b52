"""The commit log: one durable row per committed change, numbered in commit order.

:func:`append` runs inside the writing transaction, as its last statement. It first moves the
single head row (``UPDATE fhir_commit_log_head SET position = position + n``): on PostgreSQL
that row lock is held until the transaction ends, so a second writer gets its positions only
after the first has committed or rolled back; on SQLite the writer holds the database write lock
anyway. Positions therefore become visible strictly in order and without gaps — a reader that
has seen position ``p`` has seen every position below it, and a rolled-back write leaves no
number behind (its head update is rolled back with it). The lock is held only from this last
statement to the commit; every other lock of the write engine is taken before it, so the head
never closes a deadlock cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from node.store.tables import commit_log, commit_log_head, commit_subscriber
from node.store.writes import NewVersion, bulk_insert, now_utc

__all__ = [
    "CommitEvent",
    "append",
    "read_since",
    "head_position",
    "stored_position",
    "store_position",
    "WRITER_MAX",
]

WRITER_MAX = 200  # characters of the writer kept (the column's width)


@dataclass(frozen=True)
class CommitEvent:
    """One committed change. ``position`` orders every change of the store; the changes of one
    commit (a transaction Bundle) share ``commit_seq`` and have consecutive positions."""

    position: int
    commit_seq: int
    resource_type: str
    resource_id: str
    version_id: int
    interaction: str  # create | update | delete
    writer: str  # who wrote it: "user:<name>", "client:<id>", "feed:hl7v2/<app>", …
    committed_at: datetime

    @property
    def reference(self) -> str:
        return f"{self.resource_type}/{self.resource_id}"


def append(conn: Connection, versions: Sequence[NewVersion], writer: str) -> list[CommitEvent]:
    """Record ``versions`` as the changes of the transaction ``conn`` is in (its last statement:
    it takes the head lock, see the module docstring). No versions, no row and no lock."""
    if not versions:
        return []
    row = conn.execute(
        update(commit_log_head)
        .where(commit_log_head.c.id == 1)
        .values(
            position=commit_log_head.c.position + len(versions),
            commit_seq=commit_log_head.c.commit_seq + 1,
        )
        .returning(commit_log_head.c.position, commit_log_head.c.commit_seq)
    ).first()
    if row is None:
        raise RuntimeError("the commit log head row is missing (run node.store.migrate)")
    last, seq = int(row[0]), int(row[1])
    at = now_utc()
    writer = writer[:WRITER_MAX]
    events = [
        CommitEvent(
            last - len(versions) + 1 + i,
            seq,
            v.rtype,
            v.rid,
            v.version,
            v.interaction,
            writer,
            at,
        )
        for i, v in enumerate(versions)
    ]
    bulk_insert(conn, commit_log, [_row(e) for e in events])  # one executemany, no per-row work
    return events


def _row(e: CommitEvent) -> dict[str, Any]:
    return {
        "position": e.position,
        "commit_seq": e.commit_seq,
        "resource_type": e.resource_type,
        "resource_id": e.resource_id,
        "version_id": e.version_id,
        "interaction": e.interaction,
        "writer": e.writer,
        "committed_at": e.committed_at,
    }


def read_since(conn: Connection, position: int, limit: int) -> list[CommitEvent]:
    """The committed events after ``position``, oldest first, at most ``limit``."""
    rows = conn.execute(
        select(commit_log)
        .where(commit_log.c.position > position)
        .order_by(commit_log.c.position)
        .limit(limit)
    ).all()
    return [
        CommitEvent(
            int(r.position),
            int(r.commit_seq),
            r.resource_type,
            r.resource_id,
            int(r.version_id),
            r.interaction,
            r.writer,
            r.committed_at,
        )
        for r in rows
    ]


def head_position(conn: Connection) -> int:
    """The last position committed (0 before the first write)."""
    value = conn.scalar(select(commit_log_head.c.position).where(commit_log_head.c.id == 1))
    return int(value or 0)


def stored_position(conn: Connection, name: str) -> int | None:
    """How far the subscriber ``name`` has handled the log (None: never stored)."""
    value = conn.scalar(
        select(commit_subscriber.c.position).where(commit_subscriber.c.name == name)
    )
    return None if value is None else int(value)


def store_position(conn: Connection, name: str, position: int) -> None:
    """Record that ``name`` has handled everything up to ``position`` (never moves back)."""
    current = conn.execute(
        select(commit_subscriber.c.position)
        .where(commit_subscriber.c.name == name)
        .with_for_update()
    ).first()
    if current is None:
        conn.execute(
            insert(commit_subscriber).values(name=name, position=position, updated_at=now_utc())
        )
    elif position > int(current[0]):
        conn.execute(
            update(commit_subscriber)
            .where(commit_subscriber.c.name == name)
            .values(position=position, updated_at=now_utc())
        )
