"""``FhirStore``: the node's FHIR R4 persistence API (pure Python; the HTTP layer sits on top).

Every write goes through one door, :meth:`FhirStore.write` (a unit of work,
:mod:`node.store.unit_of_work`): create/update/delete, transaction and batch Bundles, ingestion,
feeds and imports share one code path — the same validation, reference checks, versioning, index
maintenance — and each commit is recorded in the commit log and published to ``store.events``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, and_, func, select
from sqlalchemy.exc import IntegrityError, OperationalError

from node.store import commit_log, transaction_keys
from node.store.bundle_ops import get_entry, response_bundle
from node.store.entries import Entry, EntryResult, ParsedBundle, labelled, parse_bundle
from node.store.events import CommitEvents
from node.store.search_exec import SearchResult, run_search
from node.store.search_query import compile_search
from node.store.tables import metadata, resource, resource_version
from node.store.transactions import prevalidate
from node.store.unit_of_work import UnitOfWork
from node.store.validation import check_id, check_type, preload_models
from node.store.value_sets import resolve_value_sets
from node.store.writes import fetch, read_current
from servicekit.outcome import BadRequest, FhirError, Gone, NotFound
from servicekit.storage import is_postgres, reader, upgrade_schema

__all__ = [
    "FhirStore",
    "WriteOutcome",
    "HistoryEntry",
    "SearchResult",
    "migrate",
    "MIGRATIONS_DIR",
    "DEFAULT_WRITER",
]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
T = TypeVar("T")
_RETRIES = 5
_ANALYZE_MIN = 500  # resources written before the first ANALYZE (PostgreSQL)
# The writer recorded when a caller names none (tools and tests; every node path names its own).
DEFAULT_WRITER = "unnamed"


def migrate(engine: Engine) -> None:
    """Bring the store's tables to the latest Alembic revision."""
    upgrade_schema(engine, MIGRATIONS_DIR)


@dataclass
class WriteOutcome:
    resource: dict[str, Any]
    status: int  # 201 created, 200 updated / matched existing
    location: str  # Type/id/_history/v

    @property
    def etag(self) -> str:
        return f'W/"{self.resource["meta"]["versionId"]}"'


@dataclass
class HistoryEntry:
    resource: dict[str, Any]  # for a deleted version: only resourceType, id and meta
    version_id: int
    deleted: bool


class FhirStore:
    def __init__(
        self, engine: Engine, *, base_url: str = "", referential_integrity: bool = False
    ) -> None:
        self.engine = engine
        # Deletes (REST, transaction, batch) of a resource other live resources reference are
        # refused with 409 naming them, unless the transaction deletes those too.
        self.referential_integrity = referential_integrity
        self._reader = reader(engine)  # reads never queue behind SQLite's write lock
        self.base_url = base_url.rstrip("/")
        self._since_analyze = 0
        self._analyzed_size = 0
        self._stats_lock = threading.Lock()
        self.events = CommitEvents(engine)

    def _note_writes(self, n: int) -> None:
        """Keep PostgreSQL's planner statistics fresh after bulk loads.

        Searches are compiled so that the planner can pick the selective index first; with
        statistics from when the tables were nearly empty it picks badly (seconds instead of
        milliseconds). Autovacuum catches up eventually; here we ANALYZE the store's tables
        whenever they have grown by half since the last time (so a bulk load of N resources
        costs O(log N) ANALYZE runs). SQLite searches do not depend on statistics.
        """
        if not is_postgres(self.engine):
            return
        with self._stats_lock:
            self._since_analyze += n
            if self._since_analyze < max(_ANALYZE_MIN, self._analyzed_size // 2):
                return
            self._analyzed_size += self._since_analyze
            self._since_analyze = 0
        with self.engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE " + ", ".join(t.name for t in metadata.sorted_tables))
            conn.commit()

    def warm_up(self, types: Iterable[str] | None = None) -> None:
        """Load the FHIR model classes of ``types`` (default: every stored type) now rather than
        on the first write of each."""
        preload_models(types)

    # -- the write door ----------------------------------------------------------------------
    def write(self, work: Callable[[UnitOfWork], T], *, writer: str = DEFAULT_WRITER) -> T:
        """Run ``work`` as one unit of work (see :mod:`node.store.unit_of_work`): one database
        transaction, retried when a concurrent writer won a race; on commit, its changes are in
        the commit log and published to ``self.events`` in commit order; on failure, nothing."""
        for attempt in range(_RETRIES):
            try:
                with self.engine.begin() as conn:
                    uow = UnitOfWork(conn, self.base_url, self.referential_integrity)
                    out = work(uow)
                    events = commit_log.append(conn, uow.versions, writer)
                break
            except (IntegrityError, OperationalError) as exc:
                if attempt == _RETRIES - 1 or not _is_race(exc):
                    raise
        else:  # pragma: no cover - the loop either breaks or raises
            raise AssertionError("unreachable")
        self.events.publish(events)
        self._note_writes(len(uow.versions))
        return out

    def prevalidate(self, entries: list[Entry]) -> None:
        """Validate the resources of write entries now, outside any transaction (the costly part
        of a write; inside ``write`` it would hold SQLite's write lock)."""
        prevalidate(entries)

    def _apply(self, entries: list[Entry], writer: str) -> list[EntryResult]:
        prevalidate(entries)  # outside the write transaction (see transactions.prevalidate)
        return self.write(lambda uow: uow.apply(entries), writer=writer)

    def _outcome(self, rtype: str, result: EntryResult) -> WriteOutcome:
        body = result.resource
        if body is None:  # a conditional create matched an existing resource
            assert result.location
            body = self.read(rtype, result.location.split("/")[1])
        location = f"{rtype}/{body['id']}/_history/{body['meta']['versionId']}"
        return WriteOutcome(body, result.status, location)

    # -- instance operations ----------------------------------------------------------------
    def create(
        self,
        res: dict[str, Any],
        *,
        if_none_exist: str | None = None,
        writer: str = DEFAULT_WRITER,
    ) -> WriteOutcome:
        rtype = res.get("resourceType") if isinstance(res, dict) else None
        if not isinstance(rtype, str):
            raise BadRequest("resource has no resourceType")
        entry = Entry.parse(0, "POST", rtype, res, if_none_exist=if_none_exist)
        return self._outcome(rtype, self._apply([entry], writer)[0])

    def update(
        self,
        rtype: str,
        rid: str,
        res: dict[str, Any],
        *,
        if_match: str | None = None,
        writer: str = DEFAULT_WRITER,
    ) -> WriteOutcome:
        check_type(rtype)
        check_id(rid)
        entry = Entry.parse(0, "PUT", f"{rtype}/{rid}", res, if_match=if_match)
        return self._outcome(rtype, self._apply([entry], writer)[0])

    def update_many(
        self, resources: list[dict[str, Any]], *, writer: str = DEFAULT_WRITER
    ) -> list[WriteOutcome]:
        """PUT each resource at its own id, all in one transaction (all or none)."""
        entries = []
        for index, res in enumerate(resources):
            rtype, rid = res.get("resourceType"), res.get("id")
            if not isinstance(rtype, str) or not isinstance(rid, str):
                raise BadRequest("update_many needs resources with resourceType and id")
            check_type(rtype)
            check_id(rid)
            entries.append(Entry.parse(index, "PUT", f"{rtype}/{rid}", res))
        results = self._apply(entries, writer)
        return [
            self._outcome(str(res["resourceType"]), result)
            for res, result in zip(resources, results, strict=True)
        ]

    def update_conditional(
        self, rtype: str, query: str, res: dict[str, Any], *, writer: str = DEFAULT_WRITER
    ) -> WriteOutcome:
        """``PUT Type?criteria``: no match → create (at the body's id, if any), one → update it,
        several → 412 (serialised like conditional creates)."""
        check_type(rtype)
        if not query:
            raise BadRequest("conditional update needs search criteria")
        entry = Entry.parse(0, "PUT", f"{rtype}?{query}", res)
        return self._outcome(rtype, self._apply([entry], writer)[0])

    def delete_conditional(self, rtype: str, query: str, *, writer: str = DEFAULT_WRITER) -> int:
        """``DELETE Type?criteria``: deletes the one match (0 matches: nothing; several: 412).
        Returns how many resources were deleted."""
        check_type(rtype)
        if not query:
            raise BadRequest("conditional delete needs search criteria")
        result = self._apply([Entry.parse(0, "DELETE", f"{rtype}?{query}")], writer)[0]
        return 1 if result.extra.get("etag") else 0

    def delete(self, rtype: str, rid: str, *, writer: str = DEFAULT_WRITER) -> None:
        check_type(rtype)
        check_id(rid)
        with self._reader.connect() as conn:
            exists = conn.scalar(
                select(func.count())
                .select_from(resource)
                .where(resource.c.resource_type == rtype, resource.c.resource_id == rid)
            )
        if not exists:
            raise NotFound(f"{rtype}/{rid} is not known")
        self._apply([Entry.parse(0, "DELETE", f"{rtype}/{rid}")], writer)

    def read(self, rtype: str, rid: str) -> dict[str, Any]:
        check_type(rtype)
        with self._reader.connect() as conn:
            return read_current(conn, rtype, rid)

    def vread(self, rtype: str, rid: str, version_id: str | int) -> dict[str, Any]:
        check_type(rtype)
        try:
            version = int(version_id)
        except (TypeError, ValueError):
            raise NotFound(f"{rtype}/{rid} has no version {version_id!r}") from None
        with self._reader.connect() as conn:
            row = conn.execute(
                select(resource_version.c.deleted, resource_version.c.body).where(
                    resource_version.c.resource_type == rtype,
                    resource_version.c.resource_id == rid,
                    resource_version.c.version_id == version,
                )
            ).first()
        if row is None:
            raise NotFound(f"{rtype}/{rid} has no version {version_id}")
        if row.deleted:
            raise Gone(f"{rtype}/{rid} version {version} is a deletion")
        return dict(row.body)

    def history_entries(self, rtype: str, rid: str) -> list[HistoryEntry]:
        """Every version, newest first (deleted versions carry only id and meta)."""
        check_type(rtype)
        with self._reader.connect() as conn:
            rows = conn.execute(
                select(
                    resource_version.c.version_id,
                    resource_version.c.deleted,
                    resource_version.c.body,
                )
                .where(
                    resource_version.c.resource_type == rtype,
                    resource_version.c.resource_id == rid,
                )
                .order_by(resource_version.c.version_id.desc())
            ).all()
        if not rows:
            raise NotFound(f"{rtype}/{rid} is not known")
        return [HistoryEntry(dict(r.body), r.version_id, bool(r.deleted)) for r in rows]

    def history(self, rtype: str, rid: str) -> list[dict[str, Any]]:
        return [h.resource for h in self.history_entries(rtype, rid)]

    # -- search -----------------------------------------------------------------------------
    def search(
        self,
        rtype: str,
        params: list[tuple[str, str]],
        *,
        compartment_patient: str | None = None,
        after_id: str | None = None,
    ) -> SearchResult:
        """``after_id``: only resources whose id sorts after it (keyset paging for exports,
        with ``_sort=_id``: each page is an index range, not an ever larger offset)."""
        with self._reader.connect() as conn:
            plan = compile_search(
                rtype,
                params,
                compartment_patient=compartment_patient,
                base_url=self.base_url,
                value_sets=resolve_value_sets(conn, params),
            )
            if after_id is not None:
                plan.conditions.append(resource.c.resource_id > after_id)
            return run_search(conn, plan, compartment_patient=compartment_patient)

    def everything(
        self,
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
        from node.store.everything import patient_everything

        with self._reader.connect() as conn:
            return patient_everything(
                conn,
                patient_id,
                since=since,
                types=types,
                count=count,
                offset=offset,
                compartment_patient=compartment_patient,
                start=start,
                end=end,
            )

    def counts(self) -> dict[str, int]:
        with self._reader.connect() as conn:
            rows = fetch(
                conn,
                select(resource.c.resource_type, func.count())
                .where(resource.c.deleted.is_(False))
                .group_by(resource.c.resource_type),
            )
        return {t: n for t, n in sorted(rows)}

    # -- bundles ----------------------------------------------------------------------------
    def transaction(
        self,
        bundle: dict[str, Any] | ParsedBundle,
        *,
        writer: str = DEFAULT_WRITER,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
    ) -> dict[str, Any]:
        """Apply a transaction Bundle atomically; returns the transaction-response Bundle.

        With ``idempotency_key`` (see :mod:`node.store.transaction_keys`) the response is
        remembered with the writes: the same key and Bundle again returns it without writing;
        the same key with another Bundle is refused (422). ``request_hash`` is the Bundle's
        ``transaction_keys.request_hash`` (required when ``bundle`` is already parsed)."""
        entries = parse_bundle(bundle, "transaction").entries
        keyed: tuple[str, str] | None = None
        if idempotency_key is not None:
            if request_hash is None:
                if isinstance(bundle, ParsedBundle):
                    raise TypeError("an idempotent parsed transaction needs its request_hash")
                request_hash = transaction_keys.request_hash(bundle)
            keyed = (transaction_keys.check_key(idempotency_key), request_hash)
            with self._reader.connect() as conn:  # a retry skips validation altogether
                replay = transaction_keys.remembered(conn, writer, *keyed)
            if replay is not None:
                return replay

        def work(uow: UnitOfWork) -> dict[str, Any]:
            if keyed is not None:  # again, inside the write: a concurrent twin may have won
                replay = transaction_keys.remembered(uow.conn, writer, *keyed)
                if replay is not None:
                    return replay
            results = uow.apply(entries)
            for entry in entries:
                if entry.method == "GET":
                    try:
                        results[entry.index] = get_entry(uow.conn, entry, self.base_url)
                    except FhirError as exc:
                        raise labelled(entry, exc) from None
            response = response_bundle("transaction-response", results)
            if keyed is not None:
                transaction_keys.remember(uow.conn, writer, *keyed, response)
            return response

        prevalidate(entries)  # outside the write transaction (see transactions.prevalidate)
        return self.write(work, writer=writer)

    def batch(
        self, bundle: dict[str, Any] | ParsedBundle, *, writer: str = DEFAULT_WRITER
    ) -> dict[str, Any]:
        """Apply each entry of a batch Bundle on its own; each gets its own status/outcome."""
        results: list[EntryResult] = []
        for entry in parse_bundle(bundle, "batch").entries:
            single = replace(entry, index=0)
            try:
                if entry.method == "GET":
                    with self._reader.connect() as conn:
                        results.append(get_entry(conn, single, self.base_url))
                else:
                    results.append(self._apply([single], writer)[0])
            except FhirError as exc:
                results.append(EntryResult(exc.status, outcome=exc.outcome()))
        return response_bundle("batch-response", results)

    def ingest_bundle(
        self, bundle: dict[str, Any], *, writer: str = DEFAULT_WRITER
    ) -> dict[str, Any]:
        """Idempotent ingest of a transaction/collection Bundle (see node/store/README.md)."""
        from node.store.ingest import idempotent_transaction

        return self.transaction(idempotent_transaction(bundle), writer=writer)


_CURRENT = and_(
    resource_version.c.resource_type == resource.c.resource_type,
    resource_version.c.resource_id == resource.c.resource_id,
    resource_version.c.version_id == resource.c.version_id,
)


def _is_race(exc: Exception) -> bool:
    text = str(getattr(exc, "orig", exc)).lower()
    return any(
        s in text
        for s in (
            "unique",
            "duplicate key",
            "database is locked",
            "deadlock",
            "could not serialize",
        )
    )
