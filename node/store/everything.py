"""``Patient/{id}/$everything``: the patient, their compartment and what it references.

The compartment is every resource with a reference to the patient (the ``_compartment`` index
rows); referenced Organization/Practitioner/PractitionerRole/Location/Medication resources are
added. ``_since`` (lastUpdated ≥), ``_type`` and ``_count``/offset paging are honoured; the
ordering is stable: the Patient, then the compartment by type and id, then referenced resources.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select

from node.store.dates import MAX_DT, MIN_DT, parse_date_range
from node.store.search_exec import SearchResult
from node.store.search_index import COMPARTMENT_PARAM
from node.store.search_params import SHARED_TYPES, SUPPORTED_SEARCH_PARAMS
from node.store.search_query import MAX_COUNT
from node.store.tables import idx_date, idx_reference, with_owner
from node.store.tables import resource as res
from node.store.writes import current_bodies, current_rows, fetch, read_current
from servicekit.outcome import BadRequest, Forbidden

__all__ = ["patient_everything"]

Key = tuple[str, str]


def _compartment_keys(conn: Connection, patient_id: str) -> list[tuple[str, str, Any]]:
    stmt = (
        select(res.c.resource_type, res.c.resource_id, res.c.last_updated)
        .select_from(with_owner(idx_reference))
        .where(
            idx_reference.c.target_id == patient_id,
            idx_reference.c.target_type == "Patient",
            idx_reference.c.param == COMPARTMENT_PARAM,
            res.c.deleted.is_(False),
        )
    )
    return [(t, i, u) for t, i, u in fetch(conn, stmt)]


def _referenced_shared(conn: Connection, owners: list[Key]) -> list[tuple[str, str, Any]]:
    targets: set[Key] = set()
    by_type: dict[str, list[str]] = {}
    for t, i in owners:
        by_type.setdefault(t, []).append(i)
    for rtype, ids in by_type.items():
        for start in range(0, len(ids), 500):
            stmt = select(idx_reference.c.target_type, idx_reference.c.target_id).where(
                idx_reference.c.resource_type == rtype,
                idx_reference.c.resource_id.in_(ids[start : start + 500]),
                idx_reference.c.target_type.in_(sorted(SHARED_TYPES)),
            )
            targets.update((t, i) for t, i in fetch(conn, stmt))
    out = []
    for rtype in sorted({t for t, _ in targets}):
        ids = sorted(i for t, i in targets if t == rtype)
        for start in range(0, len(ids), 500):
            stmt = select(res.c.resource_id, res.c.last_updated).where(
                res.c.resource_type == rtype,
                res.c.resource_id.in_(ids[start : start + 500]),
                res.c.deleted.is_(False),
            )
            out += [(rtype, i, u) for i, u in fetch(conn, stmt)]
    return out


def _care_window(start: str | None, end: str | None) -> tuple[Any, Any] | None:
    """``start``/``end`` of $everything as [low, high) (either may be open)."""
    if not start and not end:
        return None
    try:
        low = parse_date_range(start)[0] if start else MIN_DT
        high = parse_date_range(end)[1] if end else MAX_DT
    except ValueError:
        raise BadRequest("start/end must be FHIR dates", expression=["start"]) from None
    if low >= high:
        raise BadRequest("start must be before end", expression=["start"])
    return low, high


def _outside_window(conn: Connection, keys: list[Key], window: tuple[Any, Any]) -> set[Key]:
    """Members whose care dates (every date index row: effective, period, onset, authoredOn…)
    all lie outside ``window``. Members without care dates stay (FHIR: start/end relate to care
    dates; undated resources are included)."""
    low, high = window
    dated: set[Key] = set()
    inside: set[Key] = set()
    by_type: dict[str, list[str]] = {}
    for t, i in keys:
        by_type.setdefault(t, []).append(i)
    for rtype, ids in by_type.items():
        for n in range(0, len(ids), 500):
            stmt = select(idx_date.c.resource_id, idx_date.c.low, idx_date.c.high).where(
                idx_date.c.resource_type == rtype, idx_date.c.resource_id.in_(ids[n : n + 500])
            )
            for rid, lo, hi in conn.execute(stmt):
                dated.add((rtype, str(rid)))
                if lo < high and hi > low:
                    inside.add((rtype, str(rid)))
    return dated - inside


def patient_everything(
    conn: Connection,
    patient_id: str,
    *,
    since: str | None = None,
    types: list[str] | None = None,
    count: int | None = None,
    offset: int = 0,
    compartment_patient: str | None = None,
    start: str | None = None,
    end: str | None = None,
) -> SearchResult:
    if compartment_patient is not None and compartment_patient != patient_id:
        raise Forbidden("this caller may only read its own patient's record")
    if count is not None and count < 0 or offset < 0:
        raise BadRequest("_count and _offset must not be negative")
    wanted = set(types) if types else None
    for t in wanted or ():
        if t not in SUPPORTED_SEARCH_PARAMS:
            raise BadRequest(f"_type: unknown resource type {t!r}", expression=["_type"])
    since_dt = None
    if since:
        try:
            since_dt = parse_date_range(since)[0]
        except ValueError:
            raise BadRequest(
                f"_since: malformed instant {since!r}", expression=["_since"]
            ) from None
    window = _care_window(start, end)
    patient = read_current(conn, "Patient", patient_id)  # NotFound / Gone
    members = _compartment_keys(conn, patient_id)
    if window is not None:
        outside = _outside_window(conn, [(t, i) for t, i, _ in members], window)
        members = [m for m in members if (m[0], m[1]) not in outside]
    member_keys = [(t, i) for t, i, _ in members]
    shared = _referenced_shared(conn, [("Patient", patient_id), *member_keys])
    seen: set[Key] = {("Patient", patient_id)}
    ordered: list[tuple[str, str, Any]] = []
    patient_row = current_rows(conn, [("Patient", patient_id)])[("Patient", patient_id)]
    ordered.append(("Patient", patient_id, patient_row.last_updated))
    for group in (sorted(members), sorted(shared)):
        for t, i, u in group:
            if (t, i) not in seen:
                seen.add((t, i))
                ordered.append((t, i, u))
    selected = [
        (t, i)
        for t, i, u in ordered
        if (wanted is None or t in wanted) and (since_dt is None or (u or MIN_DT) >= since_dt)
    ]
    limit = MAX_COUNT if count is None else min(count, MAX_COUNT)
    page = selected[offset : offset + limit]
    bodies = current_bodies(conn, [k for k in page if k != ("Patient", patient_id)])
    bodies[("Patient", patient_id)] = patient
    return SearchResult(
        total=len(selected),
        resources=[bodies[k] for k in page if k in bodies],
        included=[],
        offset=offset,
        count=limit,
    )
