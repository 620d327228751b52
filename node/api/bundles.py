"""Response Bundles (searchset, history) and their paging links. Pure functions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

__all__ = ["searchset", "history_bundle", "page_links", "PAGING_PARAMS"]

PAGING_PARAMS = ("_offset", "_count")


def _url(base: str, path: str, params: Sequence[tuple[str, str]]) -> str:
    query = urlencode(list(params))
    return f"{base}/{path}" + (f"?{query}" if query else "")


def page_links(
    base: str,
    path: str,
    params: Sequence[tuple[str, str]],
    *,
    total: int,
    offset: int,
    count: int,
) -> list[dict[str, str]]:
    """``self``, ``next`` and ``previous`` links; pages are addressed by ``_offset``/``_count``."""
    kept = [(k, v) for k, v in params if k not in PAGING_PARAMS]

    def at(off: int) -> str:
        return _url(base, path, [*kept, ("_count", str(count)), ("_offset", str(off))])

    links = [{"relation": "self", "url": at(offset)}]
    if count > 0 and offset + count < total:
        links.append({"relation": "next", "url": at(offset + count)})
    if offset > 0 and count > 0:
        links.append({"relation": "previous", "url": at(max(0, offset - count))})
    return links


def _full_url(base: str, resource: dict[str, Any]) -> str:
    return f"{base}/{resource['resourceType']}/{resource['id']}"


def searchset(
    base: str,
    path: str,
    params: Sequence[tuple[str, str]],
    *,
    total: int,
    offset: int,
    count: int,
    matches: Sequence[dict[str, Any]],
    included: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    entries = [
        {"fullUrl": _full_url(base, r), "resource": r, "search": {"mode": "match"}} for r in matches
    ]
    entries += [
        {"fullUrl": _full_url(base, r), "resource": r, "search": {"mode": "include"}}
        for r in included
    ]
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": page_links(base, path, params, total=total, offset=offset, count=count),
    }
    if entries:
        bundle["entry"] = entries
    return bundle


def history_bundle(base: str, versions: Sequence[tuple[dict[str, Any], bool]]) -> dict[str, Any]:
    """A ``history`` Bundle from ``(resource, deleted)`` pairs, newest first. A deleted version
    is an entry with a DELETE request and no resource."""
    entries = []
    for version, deleted in versions:
        rtype, rid = version["resourceType"], version["id"]
        meta = version.get("meta") or {}
        response: dict[str, Any] = {
            "status": "204" if deleted else "200",
            "etag": f'W/"{meta.get("versionId", "")}"',
        }
        if meta.get("lastUpdated"):
            response["lastModified"] = meta["lastUpdated"]
        entry: dict[str, Any] = {
            "fullUrl": f"{base}/{rtype}/{rid}",
            "request": {"method": "DELETE" if deleted else "PUT", "url": f"{rtype}/{rid}"},
            "response": response,
        }
        if not deleted:
            entry["resource"] = version
        entries.append(entry)
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "history", "total": len(entries)}
    if entries:
        bundle["entry"] = entries
    return bundle
