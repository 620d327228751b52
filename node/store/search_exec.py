"""Run compiled searches on an open connection: page, total and ``_include``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy import Connection, and_, func, select, tuple_

from node.store.search_params import SHARED_TYPES, SUPPORTED_SEARCH_PARAMS
from node.store.search_query import SearchPlan, compartment_condition, compile_search
from node.store.tables import idx_reference, idx_token, resource_version, with_owner
from node.store.tables import resource as res
from node.store.value_sets import resolve_value_sets
from node.store.writes import chunks, current_bodies, fetch
from servicekit.outcome import BadRequest

__all__ = [
    "SearchResult",
    "run_search",
    "match_ids",
    "identifier_token",
    "match_identifiers",
    "parse_query",
]


@dataclass
class SearchResult:
    total: int
    resources: list[dict[str, Any]]
    included: list[dict[str, Any]] = field(default_factory=list)
    offset: int = 0
    count: int = 0


_BODY_JOIN = and_(
    resource_version.c.resource_type == res.c.resource_type,
    resource_version.c.resource_id == res.c.resource_id,
    resource_version.c.version_id == res.c.version_id,
)


def parse_query(query: str) -> list[tuple[str, str]]:
    """``a=1&b=x|y`` → pairs (values URL-decoded)."""
    return parse_qsl(query, keep_blank_values=True)


def run_search(
    conn: Connection, plan: SearchPlan, *, compartment_patient: str | None = None
) -> SearchResult:
    resources: list[dict[str, Any]] = []
    if plan.count > 0:
        stmt = (
            select(res.c.resource_id, resource_version.c.body)
            .select_from(res.join(resource_version, _BODY_JOIN))
            .where(*plan.conditions)
            .order_by(*plan.order_by)
            .limit(plan.count)
            .offset(plan.offset)
        )
        resources = [body for _rid, body in fetch(conn, stmt)]
    if plan.count > 0 and plan.offset == 0 and len(resources) < plan.count:
        total = len(resources)  # a first page that is not full holds every match: no COUNT
    else:
        total = conn.scalar(select(func.count()).select_from(res).where(*plan.conditions)) or 0
    included = _includes(conn, plan, resources, compartment_patient) if plan.includes else []
    if plan.revincludes:
        seen = {(r["resourceType"], r["id"]) for r in [*resources, *included]}
        extra = _revincludes(conn, plan, resources, compartment_patient)
        included += [r for r in extra if (r["resourceType"], r["id"]) not in seen]
    return SearchResult(total, resources, included, plan.offset, plan.count)


def _revincludes(
    conn: Connection,
    plan: SearchPlan,
    resources: list[dict[str, Any]],
    compartment_patient: str | None,
) -> list[dict[str, Any]]:
    """Resources whose reference parameter points at one of the matches (``_revinclude``)."""
    ids = [r["id"] for r in resources]
    if not ids:
        return []
    keys: set[tuple[str, str]] = set()
    for spec in plan.revincludes:
        if spec.target_type not in (None, plan.rtype):
            continue
        stmt = select(idx_reference.c.resource_type, idx_reference.c.resource_id).where(
            idx_reference.c.target_type == plan.rtype,
            idx_reference.c.target_id.in_(ids),
            idx_reference.c.resource_type == spec.source_type,
            idx_reference.c.param == spec.param,
        )
        keys.update((t, i) for t, i in fetch(conn, stmt))
    if compartment_patient is not None:
        keys = _visible_keys(conn, keys, compartment_patient)
    bodies = current_bodies(conn, keys)
    return [bodies[k] for k in sorted(bodies)]


def _visible_keys(
    conn: Connection, keys: set[tuple[str, str]], patient_id: str
) -> set[tuple[str, str]]:
    """The keys a caller restricted to ``Patient/patient_id``'s compartment may see (batched
    per type)."""
    by_type: dict[str, list[str]] = {}
    for rtype, rid in keys:
        by_type.setdefault(rtype, []).append(rid)
    visible: set[tuple[str, str]] = set()
    for rtype, rids in by_type.items():
        if rtype in SHARED_TYPES:
            visible.update((rtype, r) for r in rids)
            continue
        for start in range(0, len(rids), 500):
            stmt = select(res.c.resource_id).where(
                res.c.resource_type == rtype,
                res.c.resource_id.in_(rids[start : start + 500]),
                compartment_condition(rtype, patient_id),
            )
            found: list[Any] = list(conn.execute(stmt).scalars())
            visible.update((rtype, str(r)) for r in found)
    return visible


def _includes(
    conn: Connection,
    plan: SearchPlan,
    resources: list[dict[str, Any]],
    compartment_patient: str | None,
) -> list[dict[str, Any]]:
    ids = [r["id"] for r in resources]
    if not ids:
        return []
    targets: set[tuple[str, str]] = set()
    for spec in plan.includes:
        stmt = select(idx_reference.c.target_type, idx_reference.c.target_id).where(
            idx_reference.c.resource_type == spec.source_type,
            idx_reference.c.param == spec.param,
            idx_reference.c.resource_id.in_(ids),
        )
        if spec.target_type:
            stmt = stmt.where(idx_reference.c.target_type == spec.target_type)
        targets.update((t, i) for t, i in fetch(conn, stmt))
    already = {(plan.rtype, rid) for rid in ids}
    targets -= already
    if compartment_patient is not None:
        targets = _visible_keys(conn, targets, compartment_patient)
    bodies = current_bodies(conn, targets)
    return [bodies[k] for k in sorted(bodies)]


def match_ids(
    conn: Connection, rtype: str, query: str, base_url: str = "", limit: int = 2
) -> list[str]:
    """Ids of live ``rtype`` resources matching ``query`` (for conditional operations)."""
    pairs = parse_query(query)
    if not pairs:
        raise BadRequest(f"conditional {rtype} operation has no search criteria")
    for key, _ in pairs:
        if key.startswith("_") and key not in ("_id", "_lastUpdated", "_tag"):
            raise BadRequest(f"conditional {rtype} operation: {key!r} is not a search criterion")
    plan = compile_search(
        rtype, pairs, base_url=base_url, value_sets=resolve_value_sets(conn, pairs)
    )
    stmt = select(res.c.resource_id).where(*plan.conditions).limit(limit)
    return list(conn.scalars(stmt))


Token = tuple[str, str]


def identifier_token(rtype: str, query: str) -> Token | None:
    """``(system, code)`` when ``query`` is exactly one ``identifier=system|code`` criterion
    (both parts non-empty, one value) on a type whose ``identifier`` is a token parameter: the
    shape :func:`match_identifiers` answers many of at once. None for anything else."""
    pdef = SUPPORTED_SEARCH_PARAMS.get(rtype, {}).get("identifier")
    if pdef is None or pdef.kind != "token":
        return None
    pairs = parse_query(query)
    if len(pairs) != 1 or pairs[0][0] != "identifier" or "," in pairs[0][1]:
        return None
    system, bar, code = pairs[0][1].partition("|")
    return (system, code) if bar and system and code else None


def match_identifiers(conn: Connection, rtype: str, tokens: list[Token]) -> dict[Token, list[str]]:
    """For each ``(system, code)``, the ids of live ``rtype`` resources with that identifier —
    what :func:`match_ids` answers for ``identifier=system|code`` (same index, same liveness),
    one query per run of :func:`~node.store.writes.chunks` instead of one compiled search each
    (a seeded or ingested transaction names one per resource)."""
    found: dict[Token, list[str]] = {t: [] for t in tokens}
    for chunk in chunks(sorted(found)):
        stmt = (
            select(idx_token.c.system, idx_token.c.code, idx_token.c.resource_id)
            .select_from(with_owner(idx_token))
            .where(
                idx_token.c.resource_type == rtype,
                idx_token.c.param == "identifier",
                tuple_(idx_token.c.system, idx_token.c.code).in_(chunk),
                res.c.deleted.is_(False),
            )
            .distinct()
        )
        for system, code, rid in fetch(conn, stmt):
            found[(str(system), str(code))].append(str(rid))
    return {t: sorted(ids) for t, ids in found.items()}
