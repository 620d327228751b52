"""The write engine: a list of entries (a transaction Bundle, or one create/update/delete) applied
atomically inside one open DB transaction.

Order follows the FHIR transaction rules: DELETE, then POST, then PUT, then GET. ``fullUrl``
(``urn:uuid:``) references are rewritten everywhere, conditional references
(``Organization?identifier=sys|val``) resolved, references to resources of this store checked,
and everything is written with one bulk insert per table. Any failure raises a FhirError naming
the entry; the caller's transaction then rolls back, so nothing is stored.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from sqlalchemy import Connection, select, text

from node.store.entries import METHODS, Entry, EntryResult, labelled
from node.store.search_exec import identifier_token, match_identifiers, match_ids, parse_query
from node.store.search_index import (
    COMPARTMENT_PARAM,
    VALUE_KINDS,
    extract_index_rows,
    split_reference,
)
from node.store.tables import idx_reference
from node.store.validation import check_type, validate_resource
from node.store.writes import (
    NewVersion,
    current_bodies,
    current_rows,
    keys_in,
    now_utc,
    stamp,
    write_versions,
)
from servicekit.outcome import BadRequest, Conflict, FhirError, PreconditionFailed, Unprocessable

__all__ = ["apply_entries", "etag", "prevalidate"]

Key = tuple[str, str]


def _lock_key(criteria: str) -> int:
    """The advisory-lock key of a conditional criteria: keyed by the decoded criteria, so
    differently quoted spellings of one search serialise."""
    rtype, _, query = criteria.partition("?")
    canonical = repr((rtype, sorted(parse_query(query))))
    return int.from_bytes(hashlib.sha256(canonical.encode()).digest()[:8], "big", signed=True)


# References that can only name another entry of the same Bundle (by its fullUrl).
_BUNDLE_LOCAL = ("urn:uuid:", "urn:oid:")


def etag(version: int | str) -> str:
    return f'W/"{version}"'


def _version_of(if_match: str) -> str:
    value = if_match.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"')


def prevalidate(entries: list[Entry]) -> None:
    """Validate the resources of ``entries`` before the write transaction begins.

    Validation is the costliest step of a write; done here it does not hold the database's
    write lock (SQLite serialises writers), so concurrent requests validate in parallel.
    Errors are the same as inside the transaction (entry named in front).
    """
    for entry in entries:
        if entry.method in ("POST", "PUT"):
            try:
                validate_resource(entry.resource, expected_type=entry.rtype)
            except FhirError as exc:
                raise labelled(entry, exc) from None
            assert entry.resource is not None  # validate_resource refused anything else
            entry.validated = True
            # Index rows that no reference rewriting can change are extracted here too, so
            # the write lock is held only for what needs the database.
            entry.value_rows = extract_index_rows(entry.resource, kinds=VALUE_KINDS)


# How many referring resources a refused delete names.
_REFERRERS_NAMED = 10


def referrers(conn: Connection, key: Key, limit: int = _REFERRERS_NAMED + 1) -> list[Key]:
    """Live resources (other than ``key`` itself) whose references point at ``key``."""
    rtype, rid = key
    stmt = (
        select(idx_reference.c.resource_type, idx_reference.c.resource_id)
        .where(
            idx_reference.c.target_id == rid,
            idx_reference.c.target_type == rtype,
            idx_reference.c.param != COMPARTMENT_PARAM,
        )
        .distinct()
        .order_by(idx_reference.c.resource_type, idx_reference.c.resource_id)
        .limit(limit + 1)
    )
    found = [(str(t), str(i)) for t, i in conn.execute(stmt)]
    return [k for k in found if k != key][:limit]


class _Apply:
    def __init__(
        self, conn: Connection, base_url: str, referential_integrity: bool = False
    ) -> None:
        self.conn = conn
        self.base = base_url
        self.referential_integrity = referential_integrity
        self.deleted_now: set[Key] = set()  # live resources this transaction deletes
        self.ts = now_utc()
        self.url_map: dict[str, str] = {}  # fullUrl -> Type/id
        self.cond_cache: dict[str, str] = {}
        self.deleted: set[Key] = set()
        self.creating: set[Key] = set()
        self.results: dict[int, EntryResult] = {}
        self.refs: dict[int, list[tuple[str, str, str]]] = {}  # entry index -> local references
        self.pending_resources: dict[Key, dict[str, Any]] = {}
        # ifNoneExist answers looked up together before the first POST (see _prefetch)
        self.if_none_exist: dict[tuple[str, str], list[str]] | None = None
        self.entries: list[Entry] = []

    # -- resolution -------------------------------------------------------------------------
    def _serialise(self, criteria: str) -> None:
        """Conditional create/update: search-then-insert must not interleave with another
        transaction doing the same (both would create). SQLite already serialises writers;
        on PostgreSQL a transaction-scoped advisory lock keyed by the criteria does it."""
        self._serialise_all([criteria])

    def _serialise_all(self, criteria: list[str]) -> None:
        """:meth:`_serialise` for several criteria in one statement (the locks taken in key
        order, so two transactions naming the same criteria queue rather than deadlock)."""
        if self.conn.dialect.name != "postgresql" or not criteria:
            return
        keys = sorted({_lock_key(c) for c in criteria})
        self.conn.execute(
            text("SELECT count(pg_advisory_xact_lock(k)) FROM unnest(CAST(:keys AS bigint[])) k"),
            {"keys": keys},
        )

    def _map_full_url(self, entry: Entry, rtype: str, rid: str) -> None:
        if entry.full_url:
            self.url_map[entry.full_url] = f"{rtype}/{rid}"

    def _delete(self, entry: Entry) -> NewVersion | None:
        rtype, rid, query = entry.rtype, entry.rid, entry.query
        if query:
            ids = match_ids(self.conn, rtype, query, self.base)
            if len(ids) > 1:
                raise PreconditionFailed(f"conditional delete matched {len(ids)} {rtype} resources")
            rid = ids[0] if ids else None
        if rid is None:
            self.results[entry.index] = EntryResult(204)
            return None
        key = (rtype, rid)
        entry.key = key
        row = current_rows(self.conn, [key], lock=True).get(key)
        self.deleted.add(key)
        if row is None or row.deleted:
            self.results[entry.index] = EntryResult(204)
            return None
        version = row.version + 1
        self.deleted_now.add(key)
        body = stamp({"resourceType": rtype}, rid, version, self.ts)
        self.results[entry.index] = EntryResult(204, extra={"etag": etag(version)})
        return NewVersion(
            rtype, rid, version, self.ts, True, body, existed=True, interaction="delete"
        )

    def _post(self, entry: Entry) -> Key | None:
        rtype = entry.rtype
        if not entry.validated:
            validate_resource(entry.resource, expected_type=rtype)
        if entry.if_none_exist:
            ids = self._if_none_exist(rtype, entry.if_none_exist)
            if len(ids) > 1:
                raise PreconditionFailed(
                    f"ifNoneExist {entry.if_none_exist!r} matched {len(ids)} {rtype} resources"
                )
            if ids:
                self._map_full_url(entry, rtype, ids[0])
                self.results[entry.index] = EntryResult(200, location=f"{rtype}/{ids[0]}")
                entry.key = (rtype, ids[0])
                return None
        key = (rtype, str(uuid.uuid4()))
        self._map_full_url(entry, rtype, key[1])
        return key

    def _if_none_exist(self, rtype: str, query: str) -> list[str]:
        """The live resources an ifNoneExist names. Looked up when the first POST asks, for
        every POST of the Bundle at once (DELETEs, which come first, write nothing before the
        end, so a search now and one per entry see the same rows); a criterion of another shape
        than ``identifier=system|code`` is searched on its own."""
        if self.if_none_exist is None:
            self.if_none_exist = self._prefetch()
        found = self.if_none_exist.get((rtype, query))
        if found is not None:
            return found
        self._serialise(f"{rtype}?{query}")
        return match_ids(self.conn, rtype, query, self.base)

    def _prefetch(self) -> dict[tuple[str, str], list[str]]:
        by_type: dict[str, dict[str, tuple[str, str]]] = {}
        for entry in self.entries:
            if entry.method == "POST" and entry.if_none_exist:
                token = identifier_token(entry.rtype, entry.if_none_exist)
                if token is not None:
                    by_type.setdefault(entry.rtype, {})[entry.if_none_exist] = token
        self._serialise_all([f"{rtype}?{q}" for rtype, queries in by_type.items() for q in queries])
        answers: dict[tuple[str, str], list[str]] = {}
        for rtype, queries in by_type.items():
            ids = match_identifiers(self.conn, rtype, list(queries.values()))
            answers.update({(rtype, q): ids[token] for q, token in queries.items()})
        return answers

    def _put(self, entry: Entry) -> Key:
        rtype, rid, query = entry.rtype, entry.rid, entry.query
        if not entry.validated:
            validate_resource(entry.resource, expected_type=rtype)
        assert entry.resource is not None
        body_id = entry.resource.get("id")
        if query:
            self._serialise(f"{rtype}?{query}")
            ids = match_ids(self.conn, rtype, query, self.base)
            if len(ids) > 1:
                raise PreconditionFailed(f"conditional update matched {len(ids)} {rtype} resources")
            rid = ids[0] if ids else (body_id or str(uuid.uuid4()))
            if ids and body_id and body_id != rid:
                raise BadRequest(f"resource id {body_id!r} does not match the matched {rid!r}")
        elif body_id is not None and body_id != rid:
            raise BadRequest(f"resource id {body_id!r} does not match the URL id {rid!r}")
        assert rid is not None
        self._map_full_url(entry, rtype, rid)
        return (rtype, rid)

    def _resolve_conditional(self, ref: str) -> str:
        if ref not in self.cond_cache:
            rtype, _, query = ref.partition("?")
            check_type(rtype)
            found = set(match_ids(self.conn, rtype, query, self.base))
            found |= self._pending_identifier_matches(rtype, query)
            ids = sorted(found)
            if not ids:
                raise Unprocessable(f"conditional reference {ref!r} matched no resource")
            if len(ids) > 1:
                raise PreconditionFailed(f"conditional reference {ref!r} matched several resources")
            self.cond_cache[ref] = f"{rtype}/{ids[0]}"
        return self.cond_cache[ref]

    def _pending_identifier_matches(self, rtype: str, query: str) -> set[str]:
        """Resources created/updated earlier in this Bundle that match ``identifier=sys|val``
        (the only criterion resolved against not-yet-written entries)."""
        pairs = parse_query(query)
        if len(pairs) != 1 or pairs[0][0] != "identifier" or "|" not in pairs[0][1]:
            return set()
        system, value = pairs[0][1].split("|", 1)
        return {
            key[1]
            for key, res in self.pending_resources.items()
            if key[0] == rtype
            and any(
                isinstance(i, dict) and i.get("system") == system and i.get("value") == value
                for i in res.get("identifier") or []
            )
        }

    def _rewrite(self, node: Any, refs: list[tuple[str, str, str]]) -> Any:
        """A copy of ``node`` with fullUrl/conditional references replaced; the local
        references it holds (outside ``contained``) are appended to ``refs``."""
        if isinstance(node, dict):
            out = {}
            for k, v in node.items():
                if k == "reference" and isinstance(v, str):
                    if v in self.url_map:
                        v = self.url_map[v]
                    elif v.startswith(_BUNDLE_LOCAL):
                        # a fullUrl of an entry that is not in this Bundle: FHIR says it must
                        # resolve within the Bundle; refused like any missing reference (422)
                        raise Unprocessable(f"reference {v!r} matches no fullUrl in the Bundle")
                    elif "?" in v and v[:1].isupper():
                        v = self._resolve_conditional(v)
                    out[k] = v
                    target = split_reference(v, self.base)
                    if target:
                        refs.append((target[0], target[1], v))
                elif k == "contained" or isinstance(v, str | int | float | bool):
                    out[k] = v
                else:
                    out[k] = self._rewrite(v, refs)
            return out
        if isinstance(node, list):
            return [self._rewrite(x, refs) for x in node]
        return node

    # -- the whole run ----------------------------------------------------------------------
    def run(self, entries: list[Entry]) -> tuple[list[EntryResult], list[NewVersion]]:
        ordered = sorted(entries, key=lambda e: (METHODS[e.method], e.index))
        self.entries = ordered
        writes: list[NewVersion] = []
        pending: list[tuple[Entry, Key, bool]] = []  # (entry, key, is_post)
        for entry in ordered:
            try:
                if entry.method == "DELETE":
                    nv = self._delete(entry)
                    if nv:
                        writes.append(nv)
                elif entry.method == "POST":
                    key = self._post(entry)
                    if key:
                        pending.append((entry, key, True))
                elif entry.method == "PUT":
                    pending.append((entry, self._put(entry), False))
            except FhirError as exc:
                raise labelled(entry, exc) from None
        if self.referential_integrity:
            self._check_referrers([e for e in ordered if e.method == "DELETE"])
        seen: set[Key] = set()
        for entry, key, _ in pending:
            if key in seen or key in self.deleted:
                raise labelled(entry, BadRequest(f"{key[0]}/{key[1]} appears twice in the Bundle"))
            seen.add(key)
        self.creating = seen
        self.pending_resources = {
            key: entry.resource for entry, key, _ in pending if entry.resource is not None
        }
        bodies: dict[int, dict[str, Any]] = {}
        for entry, _key, _ in pending:
            refs: list[tuple[str, str, str]] = []
            try:
                assert entry.resource is not None
                if entry.resource.get("resourceType") == "Bundle":
                    bodies[entry.index] = dict(entry.resource)  # a document keeps its refs
                else:
                    bodies[entry.index] = self._rewrite(entry.resource, refs)
            except FhirError as exc:
                raise labelled(entry, exc) from None
            self.refs[entry.index] = refs
        self._check_references(pending)
        writes += self._versions(pending, bodies)
        write_versions(self.conn, writes, self.base)
        results = [self.results[e.index] for e in sorted(entries, key=lambda e: e.index)]
        return results, writes

    def _check_referrers(self, deletes: list[Entry]) -> None:
        """Referential integrity: a resource still referenced by a live resource that this
        transaction does not delete too is not deleted (409 naming the referrers)."""
        for entry in deletes:
            key = entry.key
            if key is None or key not in self.deleted_now:
                continue
            refs = [r for r in referrers(self.conn, key) if r not in self.deleted]
            if refs:
                named = ", ".join(f"{t}/{i}" for t, i in refs[:_REFERRERS_NAMED])
                more = " and more" if len(refs) > _REFERRERS_NAMED else ""
                raise labelled(
                    entry,
                    Conflict(
                        f"{key[0]}/{key[1]} is referenced by {named}{more}; delete or change "
                        "those first"
                    ),
                )

    def _check_references(self, pending: list[tuple[Entry, Key, bool]]) -> None:
        wanted: dict[Key, tuple[Entry, str]] = {}
        for entry, _key, _ in pending:
            for rtype, rid, original in self.refs[entry.index]:
                key = (rtype, rid)
                if key not in self.creating and key not in wanted:
                    wanted[key] = (entry, original)
        if not wanted:
            return
        live = keys_in(self.conn, wanted) - self.deleted
        for key, (entry, original) in wanted.items():
            if key not in live:
                raise labelled(
                    entry, Unprocessable(f"reference to a missing resource: {original!r}")
                )

    def _versions(
        self, pending: list[tuple[Entry, Key, bool]], bodies: dict[int, dict[str, Any]]
    ) -> list[NewVersion]:
        put_keys = [key for _e, key, is_post in pending if not is_post]
        rows = current_rows(self.conn, put_keys, lock=True) if put_keys else {}
        olds = current_bodies(self.conn, put_keys) if put_keys else {}
        out: list[NewVersion] = []
        for entry, key, is_post in pending:
            rtype, rid = key
            row = rows.get(key)
            if entry.if_match is not None:
                current = str(row.version) if row and not row.deleted else None
                if current != _version_of(entry.if_match):
                    raise labelled(
                        entry,
                        PreconditionFailed(
                            f"If-Match {entry.if_match} does not match the current version "
                            f"{etag(current) if current else '(none)'} of {rtype}/{rid}"
                        ),
                    )
            body = bodies[entry.index]
            old = olds.get(key)
            if old is not None and _same_content(old, body):
                assert row is not None
                self.results[entry.index] = EntryResult(
                    200,
                    location=f"{rtype}/{rid}/_history/{row.version}",
                    resource=old,
                    extra={"etag": etag(row.version), "lastModified": old["meta"]["lastUpdated"]},
                )
                continue
            version = row.version + 1 if row else 1
            stored = stamp(body, rid, version, self.ts)
            status = 201 if is_post or row is None or row.deleted else 200
            self.results[entry.index] = EntryResult(
                status,
                location=f"{rtype}/{rid}/_history/{version}",
                resource=stored,
                extra={"etag": etag(version), "lastModified": stored["meta"]["lastUpdated"]},
            )
            refs = [(t, i) for t, i, _ in self.refs[entry.index]]
            out.append(
                NewVersion(
                    rtype,
                    rid,
                    version,
                    self.ts,
                    False,
                    stored,
                    row is not None,
                    refs,
                    entry.value_rows,
                    interaction="create" if status == 201 else "update",
                )
            )
        return out


def _strip_meta(body: dict[str, Any]) -> dict[str, Any]:
    out = dict(body)
    meta = dict(out.get("meta") or {})
    meta.pop("versionId", None)
    meta.pop("lastUpdated", None)
    if meta:
        out["meta"] = meta
    else:
        out.pop("meta", None)
    return out


def _same_content(old: dict[str, Any], new: dict[str, Any]) -> bool:
    return _strip_meta(old) == _strip_meta({**new, "id": old.get("id")})


def apply_entries(
    conn: Connection,
    entries: list[Entry],
    base_url: str = "",
    *,
    referential_integrity: bool = False,
) -> tuple[list[EntryResult], list[NewVersion]]:
    """Apply ``entries`` in one transaction (the caller, a unit of work, owns it): the results
    in entry order and the versions written, in write order.

    GET entries are not handled here (the store runs them after the writes).
    """
    runner = _Apply(conn, base_url, referential_integrity)
    for e in entries:
        if e.method == "GET":
            runner.results[e.index] = EntryResult(0)  # placeholder filled by the store
    return runner.run(entries)
