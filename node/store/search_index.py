"""Search-index rows of a resource (pure functions: resource dict → rows).

Driven by :data:`node.store.search_params.SUPPORTED_SEARCH_PARAMS`. Rows are plain tuples so the
store can bulk-insert them:

* token:     ``(param, system, code)`` — CodeableConcept/Coding/Identifier/code/boolean
* string:    ``(param, normalised, raw)`` — lower-case, accents removed; HumanName/Address parts
* date:      ``(param, low, high)`` — half-open UTC range
* reference: ``(param, target_type, target_id)`` — relative ``Type/id`` references only
* quantity:  ``(param, system, code, value)``

Every reference to a Patient also yields a ``_compartment`` reference row: that is the patient
compartment used by ``$everything`` and by patient-scoped access.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from node.store.dates import parse_date_range, period_range
from node.store.search_params import (
    SUPPORTED_SEARCH_PARAMS,
    TEXT_SUFFIX,
    SearchParamDef,
    composite_key,
)

__all__ = [
    "IndexRows",
    "extract_index_rows",
    "normalise_string",
    "split_reference",
    "walk_path",
    "COMPARTMENT_PARAM",
    "VALUE_KINDS",
]

COMPARTMENT_PARAM = "_compartment"
# Index kinds whose rows do not depend on how the resource's references are written (so they can
# be extracted before a transaction rewrites urn:uuid references).
VALUE_KINDS = frozenset({"token", "string", "date", "quantity", "composite"})


@dataclass
class IndexRows:
    token: list[tuple[str, str, str]] = field(default_factory=list)
    string: list[tuple[str, str, str]] = field(default_factory=list)
    date: list[tuple[str, datetime, datetime]] = field(default_factory=list)
    reference: list[tuple[str, str, str]] = field(default_factory=list)
    quantity: list[tuple[str, str, str, float]] = field(default_factory=list)


def normalise_string(value: str) -> str:
    """Case- and accent-insensitive form used for string search."""
    decomposed = unicodedata.normalize("NFKD", value)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(stripped.casefold().split())


def walk_path(node: Any, path: str) -> Iterator[Any]:
    """All values at dotted ``path`` below ``node`` (lists are flattened at every step)."""
    items = [node]
    for part in path.split("."):
        nxt: list[Any] = []
        for item in items:
            if isinstance(item, dict) and part in item:
                value = item[part]
                if isinstance(value, list):
                    nxt.extend(value)
                else:
                    nxt.append(value)
        items = nxt
        if not items:
            return
    yield from items


def split_reference(ref: str, base_url: str = "") -> tuple[str, str] | None:
    """``Type/id`` (optionally ``Type/id/_history/v`` or ``<base_url>/Type/id``) → (type, id)."""
    if base_url and ref.startswith(base_url.rstrip("/") + "/"):
        ref = ref[len(base_url.rstrip("/")) + 1 :]
    if ref.startswith(("#", "urn:", "http://", "https://")) or "?" in ref:
        return None
    parts = ref.split("/")
    if len(parts) == 4 and parts[2] == "_history":
        parts = parts[:2]
    if len(parts) != 2 or not parts[0][:1].isupper() or not parts[1]:
        return None
    return parts[0], parts[1]


def _tokens(value: Any) -> Iterator[tuple[str, str]]:
    if isinstance(value, bool):
        yield "", "true" if value else "false"
    elif isinstance(value, str):
        yield "", value
    elif isinstance(value, dict):
        if "coding" in value or "text" in value and "system" not in value:
            for coding in value.get("coding") or []:
                if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                    yield coding.get("system") or "", coding["code"]
        elif isinstance(value.get("code"), str):  # Coding
            yield value.get("system") or "", value["code"]
        elif isinstance(value.get("value"), str):  # Identifier / ContactPoint
            yield value.get("system") or "", value["value"]


_NAME_PARTS = ("family", "given", "prefix", "suffix", "text")
_ADDRESS_PARTS = ("line", "city", "district", "state", "postalCode", "country", "text")


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        parts = _NAME_PARTS if ("family" in value or "given" in value) else _ADDRESS_PARTS
        for part in parts:
            v = value.get(part)
            for s in v if isinstance(v, list) else [v]:
                if isinstance(s, str):
                    yield s


def _dates(value: Any) -> Iterator[tuple[datetime, datetime]]:
    try:
        if isinstance(value, str):
            yield parse_date_range(value)
        elif isinstance(value, dict):
            rng = period_range(value)
            if rng:
                yield rng
    except ValueError:
        return  # validation already rejected malformed dates; nothing to index


def _texts(value: Any) -> Iterator[str]:
    """The words of a code: CodeableConcept.text and each Coding.display (for ``:text``)."""
    if isinstance(value, dict):
        if isinstance(value.get("text"), str):
            yield value["text"]
        for coding in value.get("coding") or [value]:
            if isinstance(coding, dict) and isinstance(coding.get("display"), str):
                yield coding["display"]


def _quantity(value: Any) -> tuple[str, str, float] | None:
    if not isinstance(value, dict):
        return None
    number = value.get("value")
    if not isinstance(number, int | float) or isinstance(number, bool):
        return None
    return value.get("system") or "", value.get("code") or value.get("unit") or "", float(number)


def _composite_rows(resource: dict[str, Any], pdef: SearchParamDef, rows: IndexRows) -> None:
    """A correlated composite (code$quantity within one element at ``pdef.paths[0]``): a quantity
    row per element's value under the key of each of its codes (with and without system)."""
    code_param, value_param = (
        SUPPORTED_SEARCH_PARAMS[resource["resourceType"]][c] for c in pdef.components
    )
    code_leaf = code_param.paths[0].rsplit(".", 1)[-1]
    value_leaf = value_param.paths[0].rsplit(".", 1)[-1]
    for element in walk_path(resource, pdef.paths[0]):
        quantity = _quantity(element.get(value_leaf)) if isinstance(element, dict) else None
        if quantity is None:
            continue
        for system, code in _tokens(element.get(code_leaf)):
            for key in (
                composite_key(pdef.name, system, code),
                composite_key(pdef.name, None, code),
            ):
                rows.quantity.append((key, *quantity))


def _param_rows(resource: dict[str, Any], pdef: SearchParamDef, rows: IndexRows, base: str) -> None:
    if pdef.kind == "composite":
        if pdef.paths:
            _composite_rows(resource, pdef, rows)
        return
    for path in pdef.paths:
        for value in walk_path(resource, path):
            if pdef.kind == "token":
                rows.token.extend((pdef.name, s, c) for s, c in _tokens(value))
                text_param = pdef.name + TEXT_SUFFIX
                rows.string.extend((text_param, normalise_string(t), t) for t in _texts(value))
            elif pdef.kind == "string":
                rows.string.extend((pdef.name, normalise_string(s), s) for s in _strings(value))
            elif pdef.kind == "date":
                rows.date.extend((pdef.name, lo, hi) for lo, hi in _dates(value))
            elif pdef.kind == "reference":
                ref = value.get("reference") if isinstance(value, dict) else None
                target = split_reference(ref, base) if isinstance(ref, str) else None
                if target and (not pdef.targets or target[0] in pdef.targets):
                    rows.reference.append((pdef.name, target[0], target[1]))
            elif pdef.kind == "quantity":
                quantity = _quantity(value)
                if quantity is not None:
                    rows.quantity.append((pdef.name, *quantity))


def _patient_references(node: Any, base: str, out: set[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                target = split_reference(value, base)
                if target and target[0] == "Patient":
                    out.add(target[1])
            elif key != "contained":
                _patient_references(value, base, out)
    elif isinstance(node, list):
        for item in node:
            _patient_references(item, base, out)


def extract_index_rows(
    resource: dict[str, Any],
    base_url: str = "",
    *,
    references: list[tuple[str, str]] | None = None,
    kinds: Collection[str] | None = None,
) -> IndexRows:
    """The index rows of ``resource`` for every supported parameter of its type.

    ``references``: the resource's local (type, id) references outside ``contained``, when the
    caller has them already (saves a walk over the resource). ``kinds``: only parameters of
    these kinds (e.g. :data:`VALUE_KINDS`, which do not depend on how references are written)."""
    rtype = resource["resourceType"]
    rows = IndexRows()
    for pdef in SUPPORTED_SEARCH_PARAMS.get(rtype, {}).values():
        if pdef.kind != "special" and (kinds is None or pdef.kind in kinds):
            _param_rows(resource, pdef, rows, base_url)
    with_refs = kinds is None or "reference" in kinds
    if rtype != "Bundle" and with_refs:  # a document's contents are not the Bundle's references
        patients: set[str] = set()
        if references is None:
            _patient_references(resource, base_url, patients)
        else:
            patients.update(i for t, i in references if t == "Patient")
        rows.reference.extend((COMPARTMENT_PARAM, "Patient", pid) for pid in sorted(patients))
    # de-duplicate (the same code can appear twice, e.g. code and component.code)
    rows.token = list(dict.fromkeys(rows.token))
    rows.string = list(dict.fromkeys(rows.string))
    rows.date = list(dict.fromkeys(rows.date))
    rows.reference = list(dict.fromkeys(rows.reference))
    rows.quantity = list(dict.fromkeys(rows.quantity))
    return rows
