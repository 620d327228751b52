"""Low-level reads and bulk writes of resource rows inside one open transaction.

Everything here takes a SQLAlchemy ``Connection`` that is already in a transaction; the callers
(:mod:`node.store.transactions`) decide what to write, this module writes it with as few round
trips as possible: one executemany per table for a whole transaction Bundle.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, select

from node.store.dates import to_instant
from node.store.search_index import IndexRows, extract_index_rows
from node.store.tables import INDEX_TABLES, resource, resource_version
from servicekit.outcome import Gone, NotFound

__all__ = [
    "NewVersion",
    "CurrentRow",
    "now_utc",
    "stamp",
    "current_rows",
    "current_bodies",
    "write_versions",
    "bulk_insert",
    "keys_in",
    "fetch",
    "chunks",
    "read_current",
]

Key = tuple[str, str]
_CHUNK = 500


@dataclass
class NewVersion:
    rtype: str
    rid: str
    version: int
    last_updated: datetime
    deleted: bool
    body: dict[str, Any]
    existed: bool  # a current row exists already (update it rather than insert)
    references: list[tuple[str, str]] | None = None  # local (type, id) refs, if already known
    value_rows: IndexRows | None = None  # VALUE_KINDS rows, if extracted already (outside lock)
    interaction: str = "update"  # create | update | delete: what the commit event reports


@dataclass
class CurrentRow:
    version: int
    deleted: bool
    last_updated: datetime


def fetch(conn: Connection, stmt: Any) -> list[Any]:
    """Rows of ``stmt`` (typed loosely: the Core tables carry no Python types)."""
    return list(conn.execute(stmt))


def now_utc() -> datetime:
    """Naive UTC now, truncated to milliseconds (the precision of meta.lastUpdated)."""
    now = datetime.now(UTC).replace(tzinfo=None)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def stamp(body: dict[str, Any], rid: str, version: int, ts: datetime) -> dict[str, Any]:
    """A copy of ``body`` carrying its id, meta.versionId and meta.lastUpdated."""
    out = dict(body)
    out["id"] = rid
    meta = dict(out.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = to_instant(ts)
    out["meta"] = meta
    # keep resourceType first for readability of stored JSON
    return {"resourceType": out.pop("resourceType"), **out}


def chunks(items: list[Any]) -> Iterable[list[Any]]:
    """``items`` in runs of at most 500: the store's bound on one statement's IN list."""
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def _by_type(keys: Iterable[Key]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = defaultdict(list)
    for rtype, rid in keys:
        grouped[rtype].append(rid)
    return grouped


def current_rows(
    conn: Connection, keys: Iterable[Key], *, lock: bool = False
) -> dict[Key, CurrentRow]:
    """The current-version rows of ``keys`` (deleted ones included). ``lock``: SELECT FOR UPDATE."""
    out: dict[Key, CurrentRow] = {}
    for rtype, ids in _by_type(set(keys)).items():
        for chunk in chunks(sorted(ids)):
            stmt = select(
                resource.c.resource_id,
                resource.c.version_id,
                resource.c.deleted,
                resource.c.last_updated,
            ).where(resource.c.resource_type == rtype, resource.c.resource_id.in_(chunk))
            if lock:
                stmt = stmt.with_for_update()
            for rid, version, deleted, updated in fetch(conn, stmt):
                out[(rtype, rid)] = CurrentRow(version, bool(deleted), updated)
    return out


def current_bodies(conn: Connection, keys: Iterable[Key]) -> dict[Key, dict[str, Any]]:
    """Bodies of the current, non-deleted versions of ``keys``."""
    out: dict[Key, dict[str, Any]] = {}
    for rtype, ids in _by_type(set(keys)).items():
        for chunk in chunks(sorted(ids)):
            stmt = (
                select(resource.c.resource_id, resource_version.c.body)
                .select_from(
                    resource.join(
                        resource_version,
                        and_(
                            resource_version.c.resource_type == resource.c.resource_type,
                            resource_version.c.resource_id == resource.c.resource_id,
                            resource_version.c.version_id == resource.c.version_id,
                        ),
                    )
                )
                .where(
                    resource.c.resource_type == rtype,
                    resource.c.resource_id.in_(chunk),
                    resource.c.deleted.is_(False),
                )
            )
            for rid, body in fetch(conn, stmt):
                out[(rtype, rid)] = body
    return out


def write_versions(conn: Connection, items: list[NewVersion], base_url: str = "") -> None:
    """Insert the new versions, move the current pointers, and rewrite their index rows."""
    if not items:
        return
    bulk_insert(
        conn,
        resource_version,
        [
            {
                "resource_type": it.rtype,
                "resource_id": it.rid,
                "version_id": it.version,
                "last_updated": it.last_updated,
                "deleted": it.deleted,
                "body": it.body,
            }
            for it in items
        ],
    )
    fresh = [it for it in items if not it.existed]
    if fresh:
        bulk_insert(
            conn,
            resource,
            [
                {
                    "resource_type": it.rtype,
                    "resource_id": it.rid,
                    "version_id": it.version,
                    "last_updated": it.last_updated,
                    "deleted": it.deleted,
                }
                for it in fresh
            ],
        )
    existing = [it for it in items if it.existed]
    if existing:
        conn.execute(
            resource.update()
            .where(
                resource.c.resource_type == bindparam("k_type"),
                resource.c.resource_id == bindparam("k_id"),
            )
            .values(
                version_id=bindparam("v"), last_updated=bindparam("ts"), deleted=bindparam("d")
            ),
            [
                {
                    "k_type": it.rtype,
                    "k_id": it.rid,
                    "v": it.version,
                    "ts": it.last_updated,
                    "d": it.deleted,
                }
                for it in existing
            ],
        )
        for table in INDEX_TABLES.values():
            for rtype, ids in _by_type((it.rtype, it.rid) for it in existing).items():
                for chunk in chunks(ids):
                    conn.execute(
                        table.delete().where(
                            table.c.resource_type == rtype, table.c.resource_id.in_(chunk)
                        )
                    )
    _insert_index_rows(conn, [it for it in items if not it.deleted], base_url)


def bulk_insert(conn: Connection, table: Any, rows: list[dict[str, Any]]) -> None:
    """One executemany of ``rows`` (all with the same keys) into ``table``.

    On SQLite the rows go to the driver as tuples through the columns' own bind processors
    (the same text SQLAlchemy would store: JSON, DateTime formats), skipping SQLAlchemy's
    per-row parameter handling — a large share of the time spent inside the write lock.
    """
    if conn.dialect.name != "sqlite":
        conn.execute(table.insert(), rows)
        return
    compiled = table.insert().compile(dialect=conn.dialect, column_keys=list(rows[0]))
    names = list(compiled.positiontup or ())  # qmark: the statement's parameter order
    procs = [table.c[n].type._cached_bind_processor(conn.dialect) for n in names]
    sql = str(compiled)
    if not any(procs):
        conn.exec_driver_sql(sql, [tuple(r[n] for n in names) for r in rows])
        return
    pairs = list(zip(names, procs, strict=True))
    conn.exec_driver_sql(sql, [tuple(p(r[n]) if p else r[n] for n, p in pairs) for r in rows])


def _insert_index_rows(conn: Connection, items: list[NewVersion], base_url: str) -> None:
    token: list[dict[str, Any]] = []
    string: list[dict[str, Any]] = []
    date: list[dict[str, Any]] = []
    reference: list[dict[str, Any]] = []
    quantity: list[dict[str, Any]] = []
    for it in items:
        if it.value_rows is None:
            rows = extract_index_rows(it.body, base_url, references=it.references)
        else:
            rows = it.value_rows
            rows.reference = extract_index_rows(
                it.body, base_url, references=it.references, kinds=("reference",)
            ).reference
        own = {"resource_type": it.rtype, "resource_id": it.rid}
        token += [{**own, "param": p, "system": s, "code": c} for p, s, c in rows.token]
        string += [{**own, "param": p, "value": v, "raw": r} for p, v, r in rows.string]
        date += [{**own, "param": p, "low": lo, "high": hi} for p, lo, hi in rows.date]
        reference += [
            {**own, "param": p, "target_type": t, "target_id": i} for p, t, i in rows.reference
        ]
        quantity += [
            {**own, "param": p, "system": s, "code": c, "value": v} for p, s, c, v in rows.quantity
        ]
    for kind, rows_ in (
        ("token", token),
        ("string", string),
        ("date", date),
        ("reference", reference),
        ("quantity", quantity),
    ):
        if rows_:
            bulk_insert(conn, INDEX_TABLES[kind], rows_)


def keys_in(conn: Connection, keys: Iterable[Key]) -> set[Key]:
    """Which of ``keys`` exist as live (non-deleted) resources."""
    found: set[Key] = set()
    for rtype, ids in _by_type(set(keys)).items():
        for chunk in chunks(sorted(ids)):
            stmt = select(resource.c.resource_id).where(
                resource.c.resource_type == rtype,
                resource.c.resource_id.in_(chunk),
                resource.c.deleted.is_(False),
            )
            found.update((rtype, rid) for (rid,) in fetch(conn, stmt))
    return found


def read_current(conn: Connection, rtype: str, rid: str) -> dict[str, Any]:
    """The current body of ``rtype/rid``: NotFound if unknown, Gone if deleted."""
    row = conn.execute(
        select(resource.c.deleted, resource_version.c.body)
        .select_from(
            resource.join(
                resource_version,
                and_(
                    resource_version.c.resource_type == resource.c.resource_type,
                    resource_version.c.resource_id == resource.c.resource_id,
                    resource_version.c.version_id == resource.c.version_id,
                ),
            )
        )
        .where(resource.c.resource_type == rtype, resource.c.resource_id == rid)
    ).first()
    if row is None:
        raise NotFound(f"{rtype}/{rid} is not known")
    if row.deleted:
        raise Gone(f"{rtype}/{rid} has been deleted")
    return dict(row.body)
