"""Turn a transaction/collection/batch Bundle into an *idempotent* transaction (pure function).

Each entry with a resource gets the request of the store's one "already here" rule,
:func:`node.store.idempotency.idempotent_request` (own id → ``PUT Type/id``; business identifier
→ conditional create; else plain ``POST``). ``fullUrl`` values are kept, so ``urn:uuid:``
references inside the Bundle still resolve. DELETE/GET entries of a transaction are kept as they
are. A ``document`` Bundle is one resource: it is stored as a Bundle (the same rule applied to
the Bundle itself).
"""

from __future__ import annotations

from typing import Any

from node.store.idempotency import idempotent_request
from servicekit.outcome import BadRequest

__all__ = ["idempotent_transaction"]


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
