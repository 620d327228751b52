"""The one rule for "this input is already here" (pure functions, no database).

Whatever writes records that may arrive twice — ``ipjms node ingest``, the HL7 v2 and CSV feeds,
the synthetic cohort, imported referrals — phrases each entry with :func:`idempotent_request`,
so a second arrival adds nothing:

1. a resource with a valid ``id`` is ``PUT Type/id`` (the same resource again matches the same
   row, and unchanged content creates no new version);
2. else, with a business identifier (the one given, or the first ``identifier`` carrying system
   and value), a conditional create ``POST Type`` + ``ifNoneExist=identifier=system|value``;
3. else a plain ``POST`` (nothing to recognise it by; callers count these).

A source that has no id of its own to offer makes one with :func:`derived_id` (a stable id from
what identifies the input, e.g. sender + original id), and a search on an identifier is always
written by :func:`identifier_criteria` — one quoting, so the same identifier is the same criteria
string wherever it was built.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any
from urllib.parse import quote

from node.store.validation import valid_id
from servicekit.outcome import BadRequest

__all__ = ["token_value", "identifier_criteria", "idempotent_request", "derived_id"]

_SAFE = ":/.-_~"  # left readable; everything else a query string could misread is %-encoded
# What ``quote(…, safe=_SAFE)`` leaves as it is: ASCII letters and digits, "_.-~" and _SAFE.
_UNQUOTED = re.compile(r"[A-Za-z0-9_.\-~:/]*")


def _quote(part: str) -> str:
    # most systems and values (URLs, record ids) need no quoting: skip quote()'s encode/decode
    return part if _UNQUOTED.fullmatch(part) else quote(part, safe=_SAFE)


def token_value(system: str, value: str) -> str:
    """A token search value ``system|value`` for a query string (``|`` inside either part,
    ``&``, ``=``, ``,``, ``+``, spaces… percent-encoded; decoded by the store's query parser)."""
    return f"{_quote(str(system))}|{_quote(str(value))}"


def identifier_criteria(system: str, value: str) -> str:
    """``identifier=system|value``: the criteria of ``ifNoneExist``, conditional updates and
    conditional references that find a resource by its business identifier."""
    return f"identifier={token_value(system, value)}"


def _first_identifier(res: dict[str, Any]) -> tuple[str, str] | None:
    identifiers = res.get("identifier")
    if isinstance(identifiers, dict):  # Bundle.identifier is a single Identifier
        identifiers = [identifiers]
    for ident in identifiers or []:
        if isinstance(ident, dict) and ident.get("system") and ident.get("value"):
            return str(ident["system"]), str(ident["value"])
    return None


def idempotent_request(
    res: dict[str, Any], *, identifier: tuple[str, str] | None = None
) -> dict[str, str]:
    """The Bundle ``request`` that stores ``res`` once however often it arrives (rules 1-3);
    ``identifier`` (system, value) names the business identifier of rule 2."""
    rtype = res.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        raise BadRequest("resource has no resourceType")
    rid = res.get("id")
    if valid_id(rid):
        return {"method": "PUT", "url": f"{rtype}/{rid}"}
    key = identifier or _first_identifier(res)
    if key is not None:
        return {"method": "POST", "url": rtype, "ifNoneExist": identifier_criteria(*key)}
    return {"method": "POST", "url": rtype}


def derived_id(prefix: str, *parts: str) -> str:
    """A stable FHIR id for an input identified by ``parts`` (``prefix`` + 40 hex digits of
    SHA-256 over the parts joined by ``|``): the same input, the same id, hence rule 1."""
    digest = hashlib.sha256("|".join(parts).encode()).hexdigest()
    return f"{prefix}{digest[:40]}"
