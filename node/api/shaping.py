"""What a client asks about the shape of answers (pure): ``_summary``, ``_elements`` and the
``Prefer`` header. Each value is honoured or refused with a 400 naming it — never ignored.

- ``_summary=true`` keeps the elements FHIR marks *isSummary*; ``text`` keeps ``text`` (and
  ``id``/``meta``); ``data`` drops ``text``; ``false`` is the whole resource; ``count`` (searches
  only) returns the total alone. A subsetted resource carries the ``SUBSETTED`` meta tag.
- ``_elements=a,b`` keeps those top-level elements (a choice element by its base name, e.g.
  ``value``) plus ``id`` and ``meta``; a name that is no element of the type is a 400.
- ``Prefer: return=minimal|representation|OperationOutcome`` (writes) and
  ``Prefer: handling=strict|lenient`` (searches), ``respond-async`` (``$export``); a bad value of
  these is a 400; other preferences are left alone as RFC 7240 requires, and the answer's
  ``Preference-Applied`` names what was honoured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from node.store.validation import resource_elements
from servicekit.outcome import BadRequest

__all__ = [
    "Shaping",
    "parse_shaping",
    "shape",
    "Prefer",
    "parse_prefer",
    "applied_header",
    "SHAPING_PARAMS",
]

SHAPING_PARAMS = frozenset({"_summary", "_elements"})
_SUMMARY_MODES = ("true", "text", "data", "false", "count")
SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "As requested, resource is not fully detailed.",
}
_ALWAYS = ("resourceType", "id", "meta")


@dataclass(frozen=True)
class Shaping:
    summary: str | None = None
    elements: tuple[str, ...] | None = None

    @property
    def active(self) -> bool:
        return self.elements is not None or self.summary in ("true", "text", "data")


def parse_shaping(
    params: Sequence[tuple[str, str]], rtype: str, *, search: bool = False
) -> Shaping:
    summaries = [v for k, v in params if k == "_summary"]
    elements = [v for k, v in params if k == "_elements"]
    if len(summaries) > 1 or len(elements) > 1:
        raise BadRequest("_summary and _elements may each be given once", expression=["_summary"])
    summary = summaries[0] if summaries else None
    if summary is not None and summary not in _SUMMARY_MODES:
        raise BadRequest(
            f"_summary={summary!r} is not one of {', '.join(_SUMMARY_MODES)}",
            expression=["_summary"],
        )
    if summary == "count" and not search:
        raise BadRequest("_summary=count applies to searches only", expression=["_summary"])
    if summary not in (None, "false") and elements:
        raise BadRequest("give _summary or _elements, not both", expression=["_elements"])
    names: tuple[str, ...] | None = None
    if elements:
        names = tuple(n.strip() for n in elements[0].split(",") if n.strip())
        known = resource_elements(rtype)
        unknown = [n for n in names if n.split(".")[-1] not in known and n not in _ALWAYS]
        if not names or unknown:
            raise BadRequest(
                f"_elements names no element of {rtype}: {', '.join(unknown) or '(empty)'}",
                expression=["_elements"],
            )
        names = tuple(n.split(".")[-1] for n in names)  # "Patient.name" → "name"
    return Shaping(summary, names)


def _tagged(resource: dict[str, Any], kept: dict[str, Any]) -> dict[str, Any]:
    meta = dict(resource.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    kept["meta"] = meta
    return kept


def shape(resource: dict[str, Any], shaping: Shaping) -> dict[str, Any]:
    """``resource`` reduced as asked (unchanged when nothing is asked)."""
    if not shaping.active:
        return resource
    rtype = str(resource.get("resourceType"))
    try:
        elements = resource_elements(rtype)
    except Exception:  # not a type the model knows (cannot happen for stored resources)
        return resource
    if shaping.summary == "data":
        kept = {k: v for k, v in resource.items() if k not in ("text", "_text")}
        return _tagged(resource, kept)
    if shaping.summary == "text":
        wanted = {"text"}
    elif shaping.summary == "true":
        wanted = {name for name, info in elements.items() if info.summary}
    else:
        wanted = set(shaping.elements or ())
    keys = {k for name in wanted if name in elements for k in elements[name].keys}
    keys |= {f"_{k}" for k in keys}  # primitive extensions travel with their element
    kept = {k: v for k, v in resource.items() if k in _ALWAYS or k in keys}
    return _tagged(resource, kept)


@dataclass(frozen=True)
class Prefer:
    return_: str | None = None  # minimal | representation | OperationOutcome
    handling: str = "strict"  # strict | lenient
    respond_async: bool = False


def parse_prefer(header: str | None) -> Prefer:
    if not header:
        return Prefer()
    return_, handling, respond_async = None, "strict", False
    for item in header.split(","):
        token = item.strip().split(";")[0].strip()
        if not token:
            continue
        name, _, value = token.partition("=")
        name, value = name.strip().lower(), value.strip().strip('"')
        if name == "return":
            if value not in ("minimal", "representation", "OperationOutcome"):
                raise BadRequest(
                    f"Prefer: return={value!r} is not minimal, representation or OperationOutcome"
                )
            return_ = value
        elif name == "handling":
            if value not in ("strict", "lenient"):
                raise BadRequest(f"Prefer: handling={value!r} is not strict or lenient")
            handling = value
        elif name == "respond-async":
            respond_async = True
        # Any other preference is left alone, as RFC 7240 §2 requires; the answer's
        # Preference-Applied header names exactly the ones honoured (applied_header).
    return Prefer(return_, handling, respond_async)


def applied_header(prefer: Prefer, *, write: bool = False, search: bool = False) -> str:
    """``Preference-Applied`` (RFC 7240 §3) for what this answer honoured."""
    applied = []
    if write and prefer.return_:
        applied.append(f"return={prefer.return_}")
    if search and prefer.handling == "lenient":
        applied.append("handling=lenient")
    return ", ".join(applied)
