"""Write requests in their parsed form: one :class:`Entry` per Bundle entry or single write.

A request (``method`` + ``url``) is parsed once, here, into the resource type, id and query it
names; the API layer authorises on that parsed form (``Entry.rtype``, ``Entry.interaction``) and
the write engine (:mod:`node.store.transactions`) applies it without looking at the URL again.
Pure functions, no database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from node.store.search_index import IndexRows
from node.store.validation import check_id, check_type
from servicekit.outcome import BadRequest, FhirError

__all__ = ["Entry", "EntryResult", "ParsedBundle", "parse_bundle", "labelled", "METHODS"]

Key = tuple[str, str]
# FHIR transaction processing order: DELETE, then POST, then PUT, then GET.
METHODS = {"DELETE": 0, "POST": 1, "PUT": 2, "GET": 3}
_INTERACTIONS = {"POST": "create", "PUT": "update", "DELETE": "delete"}


@dataclass
class Entry:
    """One write (or read) request. Build it with :meth:`Entry.parse` so that ``rtype``,
    ``rid`` and ``query`` always agree with ``method`` and ``url``."""

    index: int
    method: str
    url: str  # as given, without a leading "/": kept for messages only
    rtype: str
    rid: str | None
    query: str | None
    resource: dict[str, Any] | None = None
    full_url: str | None = None
    if_none_exist: str | None = None
    if_match: str | None = None
    label: str = ""
    # filled while applying
    key: Key | None = None
    validated: bool = False  # set by prevalidate(): no need to validate again inside the lock
    value_rows: IndexRows | None = None  # set by prevalidate(): index rows not about references

    @property
    def interaction(self) -> str:
        """The FHIR interaction (create, update, delete, read, search): what scopes check."""
        if self.method == "GET":
            return "read" if self.rid is not None else "search"
        return _INTERACTIONS[self.method]

    @classmethod
    def parse(
        cls,
        index: int,
        method: str,
        url: str,
        resource: dict[str, Any] | None = None,
        *,
        full_url: str | None = None,
        if_none_exist: str | None = None,
        if_match: str | None = None,
        label: str = "",
    ) -> Entry:
        """Parse ``method url``; BadRequest (prefixed with ``label``) for what cannot be done."""
        url = url.lstrip("/")
        try:
            if method not in METHODS:
                raise BadRequest(f"unsupported request.method {method!r}")
            rtype, rid, query = _split_url(url)
            if method == "POST" and (rid is not None or query):
                raise BadRequest("POST url must be a resource type")
            if method == "PUT" and rid is None and not query:
                raise BadRequest("PUT url must be Type/id or Type?criteria")
        except FhirError as exc:
            raise _with_label(label, exc) from None
        return cls(
            index,
            method,
            url,
            rtype,
            rid,
            query,
            resource,
            full_url,
            if_none_exist,
            if_match,
            label,
        )


@dataclass
class EntryResult:
    status: int
    location: str | None = None
    resource: dict[str, Any] | None = None
    outcome: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ParsedBundle:
    """A transaction or batch Bundle, parsed once (``kind`` is its Bundle.type)."""

    kind: str
    entries: list[Entry]


def _split_url(url: str) -> tuple[str, str | None, str | None]:
    path, _, query = url.partition("?")
    parts = path.split("/")
    rtype = parts[0]
    check_type(rtype)
    if len(parts) == 1:
        return rtype, None, query or None
    if len(parts) == 2 and not query:
        check_id(parts[1])
        return rtype, parts[1], None
    raise BadRequest(f"unsupported request.url {url!r}")


def _with_label(label: str, exc: FhirError) -> FhirError:
    prefix = f"{label}: " if label else ""
    return type(exc)(
        prefix + exc.diagnostics,
        expression=exc.expression,
        status=exc.status,
        code=exc.code,
        headers=exc.headers,
    )


def labelled(entry: Entry, exc: FhirError) -> FhirError:
    """``exc`` again, with the entry named in front of its diagnostics."""
    return _with_label(entry.label, exc)


def parse_bundle(bundle: Any, kind: str | tuple[str, ...]) -> ParsedBundle:
    """The entries of a transaction/batch Bundle (BadRequest for a malformed Bundle or entry).
    ``kind``: the Bundle.type (or types) accepted. A ParsedBundle is returned as it is (after
    the same check of its kind): whoever parsed it first, nobody parses it again."""
    kinds = (kind,) if isinstance(kind, str) else kind
    if isinstance(bundle, ParsedBundle):
        if bundle.kind not in kinds:
            raise BadRequest(f"Bundle.type must be {kinds[0]!r}, got {bundle.kind!r}")
        return bundle
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise BadRequest("expected a Bundle resource")
    if bundle.get("type") not in kinds:
        wanted = " or ".join(repr(k) for k in kinds)
        raise BadRequest(f"Bundle.type must be {wanted}, got {bundle.get('type')!r}")
    raw = bundle.get("entry") or []
    if not isinstance(raw, list):
        raise BadRequest("Bundle.entry must be an array")
    entries = []
    seen_full_urls: dict[tuple[str, Any], int] = {}
    for i, e in enumerate(raw):
        label = f"Bundle.entry[{i}]"
        if not isinstance(e, dict) or not isinstance(e.get("request"), dict):
            raise BadRequest(f"{label}: missing request")
        req = e["request"]
        method, url = req.get("method"), req.get("url")
        if method not in METHODS:
            raise BadRequest(f"{label}: unsupported request.method {method!r}")
        if not isinstance(url, str) or not url:
            raise BadRequest(f"{label}: missing request.url")
        _check_unique_full_url(e, i, seen_full_urls)
        entries.append(
            Entry.parse(
                i,
                method,
                url,
                e.get("resource"),
                full_url=e.get("fullUrl"),
                if_none_exist=req.get("ifNoneExist"),
                if_match=req.get("ifMatch"),
                label=f"{label} ({method} {url.split('?')[0]})",
            )
        )
    return ParsedBundle(str(bundle["type"]), entries)


def _check_unique_full_url(e: dict[str, Any], i: int, seen: dict[tuple[str, Any], int]) -> None:
    """FHIR invariant bdl-7: fullUrl is unique in a Bundle, or else the entries sharing it have
    different ``meta.versionId``. BadRequest naming both entries."""
    full_url = e.get("fullUrl")
    if full_url is None:
        return
    if not isinstance(full_url, str) or not full_url:
        raise BadRequest(f"Bundle.entry[{i}]: fullUrl must be a non-empty string")
    res = e.get("resource")
    meta = res.get("meta") if isinstance(res, dict) else None
    version = meta.get("versionId") if isinstance(meta, dict) else None
    key = (full_url, version if isinstance(version, str) else None)
    if key in seen:
        raise BadRequest(
            f"Bundle.entry[{i}]: fullUrl {full_url!r} repeats Bundle.entry[{seen[key]}]'s "
            "(bdl-7: fullUrl must be unique in a Bundle)",
            expression=[f"Bundle.entry[{i}].fullUrl"],
        )
    seen[key] = i
