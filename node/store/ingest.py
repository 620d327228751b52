"""Turn a transaction/collection/batch Bundle into an *idempotent* transaction (pure function).

The rule (documented in node/store/README.md), per entry with a resource:

1. the resource has a valid ``id`` (its source system's id — Synthea uses UUIDs) → ``PUT Type/id``;
   re-ingesting matches the same row, and an unchanged resource creates no new version;
2. else it has an ``identifier`` with ``system`` and ``value`` → ``POST`` with
   ``ifNoneExist=identifier=system|value`` (conditional create);
3. else → plain ``POST`` (cannot be made idempotent; counted as such by callers).

``fullUrl`` values are kept, so ``urn:uuid:`` references inside the Bundle still resolve.
DELETE/GET entries of a transaction are kept as they are. A ``document`` Bundle is one resource:
it is stored as a Bundle (rule 1/2 applied to the Bundle itself).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from node.store.validation import ID_RE
from servicekit.outcome import BadRequest

__all__ = ["idempotent_transaction", "idempotent_request"]


def idempotent_request(res: dict[str, Any]) -> dict[str, str]:
    """The request of an idempotent transaction entry for ``res`` (rules 1-3)."""
    rtype = res.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        raise BadRequest("resource has no resourceType")
    rid = res.get("id")
    if isinstance(rid, str) and ID_RE.match(rid):
        return {"method": "PUT", "url": f"{rtype}/{rid}"}
    identifiers = res.get("identifier")
    if isinstance(identifiers, dict):  # Bundle.identifier is a single Identifier
        identifiers = [identifiers]
    for ident in identifiers or []:
        if isinstance(ident, dict) and ident.get("system") and ident.get("value"):
            system, value = (
                quote(str(ident["system"]), safe=""),
                quote(str(ident["value"]), safe=""),
            )
            return {"method": "POST", "url": rtype, "ifNoneExist": f"identifier={system}|{value}"}
    return {"method": "POST", "url": rtype}


def idempotent_transaction(bundle: dict[str, Any]) -> dict[str, Any]:
    """A transaction Bundle that re-ingests ``bundle`` without creating duplicates."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise BadRequest("expected a Bundle resource")
    kind = bundle.get("type")
    if kind == "document":
        return {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"resource": bundle, "request": idempotent_request(bundle)}],
        }
    if kind not in ("transaction", "collection", "batch", "searchset"):
        raise BadRequest(f"cannot ingest a Bundle of type {kind!r}")
    entries = []
    for i, e in enumerate(bundle.get("entry") or []):
        if not isinstance(e, dict):
            raise BadRequest(f"Bundle.entry[{i}] is not an object")
        method = (e.get("request") or {}).get("method")
        res = e.get("resource")
        if method in ("DELETE", "GET") or res is None:
            if method in ("DELETE", "GET"):
                entries.append(e)
                continue
            raise BadRequest(f"Bundle.entry[{i}] has no resource")
        if not isinstance(res, dict):
            raise BadRequest(f"Bundle.entry[{i}].resource is not an object")
        new = {"resource": res, "request": idempotent_request(res)}
        if e.get("fullUrl"):
            new["fullUrl"] = e["fullUrl"]
        entries.append(new)
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}
