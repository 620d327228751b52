"""What a transaction/batch Bundle needs besides writes: its GET entries and its response Bundle."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from node.store.entries import Entry, EntryResult
from node.store.search_exec import parse_query, run_search
from node.store.search_query import compile_search
from node.store.value_sets import resolve_value_sets
from node.store.writes import read_current

__all__ = ["get_entry", "response_bundle"]

_STATUS_TEXT = {200: "200 OK", 201: "201 Created", 204: "204 No Content"}


def get_entry(conn: Connection, entry: Entry, base_url: str) -> EntryResult:
    """A GET entry: a read (``Type/id``) or a search (``Type?query``), as parsed."""
    if entry.rid is not None:
        return EntryResult(
            200, resource=read_current(conn, entry.rtype, entry.rid), extra={"return": 1}
        )
    pairs = parse_query(entry.query or "")
    plan = compile_search(
        entry.rtype, pairs, base_url=base_url, value_sets=resolve_value_sets(conn, pairs)
    )
    found = run_search(conn, plan)
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": found.total,
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in found.resources],
    }
    return EntryResult(200, resource=bundle, extra={"return": 1})


def response_bundle(kind: str, results: list[EntryResult]) -> dict[str, Any]:
    entries = []
    for r in results:
        response: dict[str, Any] = {"status": _STATUS_TEXT.get(r.status, str(r.status))}
        if r.location:
            response["location"] = r.location
        if "etag" in r.extra:
            response["etag"] = r.extra["etag"]
        if "lastModified" in r.extra:
            response["lastModified"] = r.extra["lastModified"]
        if r.outcome:
            response["outcome"] = r.outcome
        entry: dict[str, Any] = {"response": response}
        if r.resource is not None and r.extra.get("return"):
            entry["resource"] = r.resource
        entries.append(entry)
    return {"resourceType": "Bundle", "type": kind, "entry": entries}
