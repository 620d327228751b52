"""Compile FHIR search parameters into SQL over the index tables (no I/O here).

:func:`compile_search` turns raw query pairs into a :class:`SearchPlan`: WHERE conditions on the
current-resource table, sort keys, paging and ``_include`` specs. Anything it does not support —
an unknown parameter, modifier or prefix, a malformed value — is a BadRequest naming it, never
silently ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import ColumnElement, and_, func, literal, not_, or_, select, tuple_
from sqlalchemy.sql.visitors import replacement_traverse

from node.store.dates import parse_date_range
from node.store.search_index import COMPARTMENT_PARAM, normalise_string, split_reference
from node.store.search_params import (
    RESULT_PARAMS,
    SUPPORTED_SEARCH_PARAMS,
    TEXT_SUFFIX,
    SearchParamDef,
    composite_key,
)
from node.store.tables import idx_date, idx_quantity, idx_reference, idx_string, idx_token
from node.store.tables import resource as res
from node.store.value_sets import Codes
from servicekit.outcome import BadRequest

__all__ = [
    "SearchPlan",
    "IncludeSpec",
    "compile_search",
    "DEFAULT_COUNT",
    "MAX_COUNT",
    "compartment_condition",
    "is_known_param",
    "RevIncludeSpec",
]

DEFAULT_COUNT = 50
MAX_COUNT = 1000
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
MODIFIERS = {
    "string": {"exact", "contains", "missing"},
    "token": {"not", "missing", "text", "in", "not-in"},
    "date": {"missing"},
    "reference": {"missing"},
    "quantity": {"missing"},
    "special": set(),
    "composite": set(),
}


@dataclass(frozen=True)
class IncludeSpec:
    source_type: str
    param: str
    target_type: str | None


@dataclass(frozen=True)
class RevIncludeSpec:
    """``_revinclude=Source:param[:Target]``: resources of ``source_type`` whose ``param``
    points at a match."""

    source_type: str
    param: str
    target_type: str | None


@dataclass
class SearchPlan:
    rtype: str
    conditions: list[ColumnElement[bool]] = field(default_factory=list)
    order_by: list[Any] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    offset: int = 0
    includes: list[IncludeSpec] = field(default_factory=list)
    revincludes: list[RevIncludeSpec] = field(default_factory=list)
    sort: str | None = None


def _int_param(name: str, value: str, *, minimum: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise BadRequest(f"{name}: {value!r} is not an integer", expression=[name]) from None
    if n < minimum:
        raise BadRequest(f"{name}: must be >= {minimum}, got {n}", expression=[name])
    return n


def _split_prefix(name: str, value: str) -> tuple[str, str]:
    if len(value) >= 2 and value[:2].isalpha():
        prefix = value[:2]
        if prefix not in PREFIXES:
            raise BadRequest(f"{name}: unknown prefix {prefix!r} in {value!r}", expression=[name])
        return prefix, value[2:]
    return "eq", value


@dataclass(frozen=True)
class _Filter:
    """ "The resource has (or, negated, has not) an index row of ``param`` matching ``match``."""

    table: Any
    param: str
    match: tuple[Any, ...]
    negated: bool = False

    def negate(self) -> _Filter:
        return _Filter(self.table, self.param, self.match, not self.negated)

    def as_in(self, rtype: str) -> Any:
        """Driving form: ``resource_id IN (index lookup)`` — the index finds the candidates."""
        t = self.table
        sub = select(t.c.resource_id).where(
            t.c.resource_type == rtype, t.c.param == self.param, *self.match
        )
        col = res.c.resource_id
        return col.notin_(sub.scalar_subquery()) if self.negated else col.in_(sub.scalar_subquery())

    def as_exists(self) -> Any:
        """Checking form: a correlated EXISTS probed per candidate through the owner index."""
        t = self.table
        ex = (
            select(literal(1))
            .where(
                t.c.resource_type == res.c.resource_type,
                t.c.resource_id == res.c.resource_id,
                t.c.param == self.param,
                *(_opaque_values(t, m) for m in self.match),
            )
            .exists()
        )
        return not_(ex) if self.negated else ex


# Sort key for lastUpdated that the planner cannot satisfy from the (type, lastUpdated) index:
# with a selective filter, SQLite would otherwise walk that index in order over every resource
# of the type instead of sorting the few matches.
_LAST_UPDATED_KEY = func.coalesce(res.c.last_updated, res.c.last_updated)

_OWNER_COLUMNS = {"resource_type", "resource_id", "param"}


def _opaque_values(table: Any, expr: Any) -> Any:
    """``expr`` with the table's value columns wrapped (``coalesce(c, c)``) so no value index
    can serve it: a per-candidate probe must go through the owner index (type, id, param). Without
    statistics SQLite would otherwise range-scan e.g. every date after 2018 for each candidate."""

    def wrap(element: Any, **_kw: Any) -> Any:
        if getattr(element, "table", None) is table and element.name not in _OWNER_COLUMNS:
            return func.coalesce(element, element)
        return None

    opts: dict[str, Any] = {}
    return replacement_traverse(expr, opts, wrap)


# Which kind of index row best drives a search (most selective first).
_DRIVE_RANK = {
    "fhir_idx_reference": 0,
    "fhir_idx_token": 1,
    "fhir_idx_string": 2,
    "fhir_idx_quantity": 3,
    "fhir_idx_date": 4,
}


def _owned(table: Any, rtype: str, param: str, *conds: Any) -> _Filter:
    del rtype  # the owner type is applied when the filter is turned into SQL
    return _Filter(table, param, tuple(conds))


def _date_value(name: str, raw: str) -> tuple[str, Any, Any]:
    prefix, text = _split_prefix(name, raw)
    try:
        low, high = parse_date_range(text)
    except ValueError:
        raise BadRequest(f"{name}: malformed date {raw!r}", expression=[name]) from None
    return prefix, low, high


def _range_match(prefix: str, lo: Any, hi: Any, sl: Any, sh: Any) -> Any:
    """Resource range [lo, hi) against search range [sl, sh) for one prefix (not 'ne')."""
    return {
        "eq": and_(lo >= sl, hi <= sh, lo < sh),  # lo < sh is implied; it bounds an index range
        "gt": hi > sh,
        "lt": lo < sl,
        "ge": hi > sl,
        "le": lo < sh,
        "sa": lo >= sh,
        "eb": hi <= sl,
    }[prefix]


def _approximately(low: Any, high: Any) -> tuple[Any, Any]:
    """FHIR ``ap``: the value's range widened by 10% of its distance from now on each side (at
    least one day), as the FHIR R4 search page suggests. Ranges are naive UTC."""
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC).replace(tzinfo=None)
    gap = max(abs(now - low), abs(now - high), timedelta(days=10)) * 0.1
    return low - gap, high + gap


def _date_condition(rtype: str, pdef: SearchParamDef, raw: str) -> Any:
    prefix, sl, sh = _date_value(pdef.name, raw)
    if prefix == "ap":
        lo_ap, hi_ap = _approximately(sl, sh)
        overlap = and_(idx_date.c.low < hi_ap, idx_date.c.high > lo_ap)
        return _owned(idx_date, rtype, pdef.name, overlap)
    match = _range_match(
        "eq" if prefix == "ne" else prefix, idx_date.c.low, idx_date.c.high, sl, sh
    )
    sub = _owned(idx_date, rtype, pdef.name, match)
    return sub.negate() if prefix == "ne" else sub


def _last_updated_condition(raw: str) -> Any:
    prefix, sl, sh = _date_value("_lastUpdated", raw)
    t = res.c.last_updated
    if prefix == "ap":
        lo_ap, hi_ap = _approximately(sl, sh)
        return and_(t >= lo_ap, t < hi_ap)
    eq = and_(t >= sl, t < sh)
    return {
        "eq": eq,
        "ne": not_(eq),
        "gt": t >= sh,
        "sa": t >= sh,
        "lt": t < sl,
        "eb": t < sl,
        "ge": t >= sl,
        "le": t < sh,
    }[prefix]


def _token_match(raw: str) -> Any:
    if "|" in raw:
        system, code = raw.split("|", 1)
        if not code:
            return idx_token.c.system == system
        return and_(idx_token.c.system == system, idx_token.c.code == code)
    return idx_token.c.code == raw


def _value_set_match(
    pdef: SearchParamDef, modifier: str, raw: str, value_sets: Mapping[str, Codes] | None
) -> Any:
    """``:in`` / ``:not-in``: the token rows whose (system, code) is one of the ValueSet's, as
    resolved by :func:`node.store.value_sets.resolve_value_sets` before compiling."""
    codes = (value_sets or {}).get(raw)
    if codes is None:
        raise BadRequest(
            f"{pdef.name}:{modifier}={raw}: a ValueSet is resolved only for the searched type's "
            "own parameters (not inside a chain or _has)",
            expression=[f"{pdef.name}:{modifier}"],
        )
    return tuple_(idx_token.c.system, idx_token.c.code).in_(sorted(codes))


def _reference_match(pdef: SearchParamDef, raw: str, type_modifier: str | None, base: str) -> Any:
    rtype, rid = _reference_target(pdef, raw, type_modifier, base)
    conds = [idx_reference.c.target_id == rid]
    if rtype:
        conds.append(idx_reference.c.target_type == rtype)
    return and_(*conds)


def _reference_list(
    pdef: SearchParamDef, values: list[str], type_modifier: str | None, base: str
) -> _Filter:
    """``param=a,b,c`` of a reference parameter as one filter with IN lists (an OR of one
    expression per value costs SQLAlchemy ~0.4 ms a value to build)."""
    targets = [_reference_target(pdef, v, type_modifier, base) for v in values]
    typed = sorted({(t, i) for t, i in targets if t})
    untyped = sorted({i for t, i in targets if not t})
    t = idx_reference
    either = []
    if typed:
        either.append(tuple_(t.c.target_type, t.c.target_id).in_(typed))
    if untyped:
        either.append(t.c.target_id.in_(untyped))
    return _Filter(t, pdef.name, (or_(*either),))


def _reference_target(
    pdef: SearchParamDef, raw: str, type_modifier: str | None, base: str
) -> tuple[str | None, str]:
    """(target type or None, target id) of one reference search value; BadRequest if bad."""
    target = split_reference(raw, base) if "/" in raw else None
    if "/" in raw and target is None:
        raise BadRequest(f"{pdef.name}: unsupported reference {raw!r}", expression=[pdef.name])
    rtype, rid = target if target else (type_modifier, raw)
    if rtype is None and len(pdef.targets) == 1:
        rtype = pdef.targets[0]
    if rtype and pdef.targets and rtype not in pdef.targets:
        raise BadRequest(
            f"{pdef.name}: {rtype} is not a valid target (expected {', '.join(pdef.targets)})",
            expression=[pdef.name],
        )
    return rtype, rid


def _quantity_condition(rtype: str, pdef: SearchParamDef, raw: str) -> Any:
    prefix, text = _split_prefix(pdef.name, raw)
    number, _, unit = text.partition("|")
    system, _, code = unit.partition("|") if unit else ("", "", "")
    try:
        n = Decimal(number)
    except InvalidOperation:
        raise BadRequest(f"{pdef.name}: malformed number {raw!r}", expression=[pdef.name]) from None
    exponent = n.as_tuple().exponent
    half = Decimal(5).scaleb((exponent if isinstance(exponent, int) else 0) - 1)
    lo, hi, v = float(n - half), float(n + half), idx_quantity.c.value
    match = {
        "eq": and_(v >= lo, v < hi),
        "ne": and_(v >= lo, v < hi),
        "gt": v > float(n),
        "lt": v < float(n),
        "ge": v >= float(n),
        "le": v <= float(n),
        "sa": v > float(n),
        "eb": v < float(n),
        "ap": and_(v >= float(n) * 0.9, v <= float(n) * 1.1)
        if n >= 0
        else and_(v >= float(n) * 1.1, v <= float(n) * 0.9),
    }[prefix]
    conds = [match]
    if code:
        conds.append(idx_quantity.c.code == code)
    if system:
        conds.append(idx_quantity.c.system == system)
    sub = _owned(idx_quantity, rtype, pdef.name, *conds)
    return sub.negate() if prefix == "ne" else sub


def _string_match(raw: str, modifier: str | None) -> Any:
    norm = normalise_string(raw)
    escaped = norm.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    if modifier == "exact":
        return idx_string.c.raw == raw
    if modifier == "contains":
        return idx_string.c.value.like(f"%{escaped}%", escape="\\")
    return idx_string.c.value.like(f"{escaped}%", escape="\\")


def _composite_parts(pdef: SearchParamDef, raw: str) -> tuple[str, str]:
    left, sep, right = raw.partition("$")
    if not sep or not left or not right or "$" in right:
        raise BadRequest(
            f"{pdef.name}: expected {pdef.components[0]}${pdef.components[1]} "
            f"(e.g. http://loinc.org|8480-6$gt100), got {raw!r}",
            expression=[pdef.name],
        )
    return left, right


def _composite_condition(rtype: str, pdef: SearchParamDef, raw: str, base: str) -> Any:
    """One ``code$value`` value. Correlated (``paths``): the quantity rows indexed under the
    code's key. Otherwise the AND of the two component parameters on the resource."""
    left, right = _composite_parts(pdef, raw)
    defs = SUPPORTED_SEARCH_PARAMS[rtype]
    first, second = defs[pdef.components[0]], defs[pdef.components[1]]
    if pdef.paths:
        system, bar, code = left.rpartition("|")
        key = composite_key(pdef.name, system if bar else None, code)
        return _quantity_condition(rtype, SearchParamDef(key, "quantity"), right)
    both = [
        _value_condition(rtype, first, None, left, base),
        _value_condition(rtype, second, None, right, base),
    ]
    return and_(*(f.as_exists() if isinstance(f, _Filter) else f for f in both))


def _value_condition(
    rtype: str,
    pdef: SearchParamDef,
    modifier: str | None,
    raw: str,
    base: str,
    value_sets: Mapping[str, Codes] | None = None,
) -> Any:
    name = pdef.name
    if modifier == "missing":
        if raw not in ("true", "false"):
            raise BadRequest(f"{name}:missing must be true or false", expression=[name])
        table = {
            "token": idx_token,
            "string": idx_string,
            "date": idx_date,
            "reference": idx_reference,
            "quantity": idx_quantity,
        }[pdef.kind]
        sub = _owned(table, rtype, name)
        return sub.negate() if raw == "true" else sub
    if name == "_id":
        return res.c.resource_id == raw
    if name == "_lastUpdated":
        return _last_updated_condition(raw)
    if pdef.kind == "date":
        return _date_condition(rtype, pdef, raw)
    if pdef.kind == "quantity":
        return _quantity_condition(rtype, pdef, raw)
    if pdef.kind == "token" and modifier == "text":  # the code's words, as a string search
        return _owned(idx_string, rtype, name + TEXT_SUFFIX, _string_match(raw, None))
    if pdef.kind == "token" and modifier in ("in", "not-in"):
        sub = _owned(idx_token, rtype, name, _value_set_match(pdef, modifier, raw, value_sets))
        return sub.negate() if modifier == "not-in" else sub
    if pdef.kind == "token":
        sub = _owned(idx_token, rtype, name, _token_match(raw))
        return sub.negate() if modifier == "not" else sub
    if pdef.kind == "composite":
        return _composite_condition(rtype, pdef, raw, base)
    if pdef.kind == "string":
        return _owned(idx_string, rtype, name, _string_match(raw, modifier))
    # reference
    match = _reference_match(pdef, raw, modifier, base)
    return _owned(idx_reference, rtype, name, match)


def _compartment_filter(rtype: str, patient_id: str) -> Any:
    if rtype == "Patient":
        return res.c.resource_id == patient_id
    return _owned(
        idx_reference,
        rtype,
        COMPARTMENT_PARAM,
        idx_reference.c.target_type == "Patient",
        idx_reference.c.target_id == patient_id,
    )


def compartment_condition(rtype: str, patient_id: str) -> Any:
    """Restrict ``rtype`` rows to the compartment of ``Patient/patient_id``."""
    f = _compartment_filter(rtype, patient_id)
    return f.as_in(rtype) if isinstance(f, _Filter) else f


def _merge_or(group: list[Any]) -> list[Any]:
    """An OR-group of filters on one index table and parameter (``patient=a,b,c``) as one
    filter whose match is the OR: one index lookup that can drive the search, instead of an
    EXISTS probe per value and candidate."""
    if len(group) < 2 or not all(
        isinstance(f, _Filter) and not f.negated and f.table is group[0].table
        and f.param == group[0].param for f in group
    ):  # fmt: skip
        return group
    either = or_(*(and_(*f.match) if f.match else literal(True) for f in group))
    return [_Filter(group[0].table, group[0].param, (either,))]


def _to_sql(rtype: str, groups: list[list[Any]]) -> list[Any]:
    """AND of OR-groups → SQL. One selective index filter drives (IN); the rest are EXISTS
    probes per candidate, so a search never materialises a large, unselective index range
    (e.g. every Observation dated after 2018) before intersecting."""
    groups = [_merge_or(g) for g in groups]
    driver: tuple[int, int] | None = None
    if not any(len(g) == 1 and not isinstance(g[0], _Filter) for g in groups):  # no _id/PK
        ranked = [
            (_DRIVE_RANK[g[0].table.name], i)
            for i, g in enumerate(groups)
            if len(g) == 1
            and isinstance(g[0], _Filter)
            and not g[0].negated
            and g[0].table.name in _DRIVE_RANK
        ]
        driver = min(ranked) if ranked else None
    out = []
    for i, group in enumerate(groups):
        if driver is not None and i == driver[1]:
            out.append(group[0].as_in(rtype))
            continue
        conds = [f.as_exists() if isinstance(f, _Filter) else f for f in group]
        out.append(conds[0] if len(conds) == 1 else or_(*conds))
    return out


def _sort_keys(rtype: str, spec: str, updated: Any) -> list[Any]:
    keys: list[Any] = []
    for item in spec.split(","):
        item = item.strip()
        desc = item.startswith("-")
        name = item.lstrip("-")
        pdef = SUPPORTED_SEARCH_PARAMS[rtype].get(name)
        if name == "_lastUpdated":
            col: Any = updated
        elif name == "_id":
            col = res.c.resource_id
        elif pdef is not None and pdef.kind == "date":
            agg = func.max(idx_date.c.high) if desc else func.min(idx_date.c.low)
            col = (
                select(agg)
                .where(
                    idx_date.c.resource_type == res.c.resource_type,
                    idx_date.c.resource_id == res.c.resource_id,
                    idx_date.c.param == name,
                )
                .scalar_subquery()
            )
        elif pdef is not None and pdef.kind in ("string", "token"):
            table = idx_string if pdef.kind == "string" else idx_token
            value = table.c.value if pdef.kind == "string" else table.c.code
            col = (
                select(func.max(value) if desc else func.min(value))
                .where(
                    table.c.resource_type == res.c.resource_type,
                    table.c.resource_id == res.c.resource_id,
                    table.c.param == name,
                )
                .scalar_subquery()
            )
        else:
            raise BadRequest(
                f"_sort: cannot sort {rtype} by {name!r} (supported: _id, _lastUpdated and "
                "date, string and token parameters)",
                expression=["_sort"],
            )
        keys.append(col.desc().nulls_last() if desc else col.asc().nulls_last())
    return keys


def _include_specs(rtype: str, value: str) -> list[IncludeSpec]:
    """``_include=*`` or ``Type:*``: every reference parameter of the type; else one."""
    if value in ("*", f"{rtype}:*", "*:*"):
        return [
            IncludeSpec(rtype, p.name, None)
            for p in SUPPORTED_SEARCH_PARAMS[rtype].values()
            if p.kind == "reference"
        ]
    return [_include_spec(rtype, value)]


def _revinclude_spec(value: str) -> RevIncludeSpec:
    parts = value.split(":")
    if len(parts) not in (2, 3):
        raise BadRequest(f"_revinclude: malformed value {value!r}", expression=["_revinclude"])
    source, param = parts[0], parts[1]
    defs = SUPPORTED_SEARCH_PARAMS.get(source)
    if defs is None:
        raise BadRequest(
            f"_revinclude: {source!r} is not a supported type", expression=["_revinclude"]
        )
    pdef = defs.get(param)
    if pdef is None or pdef.kind != "reference":
        raise BadRequest(
            f"_revinclude: {param!r} is not a reference parameter of {source}",
            expression=["_revinclude"],
        )
    return RevIncludeSpec(source, param, parts[2] if len(parts) == 3 else None)


def _include_spec(rtype: str, value: str) -> IncludeSpec:
    parts = value.split(":")
    if len(parts) not in (2, 3):
        raise BadRequest(f"_include: malformed value {value!r}", expression=["_include"])
    source, param = parts[0], parts[1]
    if source not in (rtype, "*"):
        raise BadRequest(
            f"_include: {value!r} does not start with the searched type {rtype}",
            expression=["_include"],
        )
    pdef = SUPPORTED_SEARCH_PARAMS[rtype].get(param)
    if pdef is None or pdef.kind != "reference":
        raise BadRequest(
            f"_include: {param!r} is not a reference parameter of {rtype}", expression=["_include"]
        )
    return IncludeSpec(rtype, param, parts[2] if len(parts) == 3 else None)


def compile_search(
    rtype: str,
    params: list[tuple[str, str]],
    *,
    compartment_patient: str | None = None,
    base_url: str = "",
    value_sets: Mapping[str, Codes] | None = None,
) -> SearchPlan:
    """Raw query pairs → SearchPlan. BadRequest names any unsupported or malformed parameter.
    ``value_sets``: the codes of each ValueSet an ``:in`` / ``:not-in`` value names
    (:func:`node.store.value_sets.resolve_value_sets`)."""
    defs = SUPPORTED_SEARCH_PARAMS.get(rtype)
    if defs is None:
        raise BadRequest(f"resource type {rtype!r} is not supported by this server")
    plan = SearchPlan(rtype)
    plan.conditions += [res.c.resource_type == rtype, res.c.deleted.is_(False)]
    groups: list[list[Any]] = []
    if compartment_patient is not None:
        groups.append([_compartment_filter(rtype, compartment_patient)])
    for key, value in params:
        if key in RESULT_PARAMS or key in ("_summary", "_revinclude"):
            _result_param(plan, key, value)
            continue
        if key.startswith("_has:"):
            groups.append([_has_condition(rtype, key, value, compartment_patient, base_url)])
            continue
        if "." in key.split(":")[0] or ("." in key and ":" in key.split(".")[0]):
            chained = _chain_condition(rtype, key, value, compartment_patient, base_url)
            if chained is not None:
                groups.append([chained])
            continue
        name, _, modifier = key.partition(":")
        pdef = defs.get(name)
        if pdef is None:
            raise BadRequest(f"unknown search parameter {key!r} for {rtype}", expression=[key])
        if modifier and modifier not in MODIFIERS[pdef.kind]:
            is_type_modifier = pdef.kind == "reference" and modifier in SUPPORTED_SEARCH_PARAMS
            if not is_type_modifier:
                raise BadRequest(
                    f"unsupported modifier {key!r} for {rtype} search", expression=[key]
                )
        values = [v for v in value.split(",") if v != ""]
        if not values:
            continue  # FHIR: an empty parameter value is ignored
        if pdef.kind == "reference" and len(values) > 1 and modifier != "missing":
            groups.append([_reference_list(pdef, values, modifier or None, base_url)])
            continue
        if pdef.kind == "composite" and not pdef.paths and len(values) == 1:
            # the resource's own code and value: two index filters, either may drive
            left, right = _composite_parts(pdef, values[0])
            for part, component in zip((left, right), pdef.components, strict=True):
                groups.append([_value_condition(rtype, defs[component], None, part, base_url)])
            continue
        groups.append(
            [
                _value_condition(rtype, pdef, modifier or None, v, base_url, value_sets)
                for v in values
            ]
        )
    plan.conditions += _to_sql(rtype, groups)
    # with nothing selective, walking the (type, lastUpdated) index in order is best
    updated = _LAST_UPDATED_KEY if groups else res.c.last_updated
    plan.order_by = [
        *_sort_keys(rtype, plan.sort or "_lastUpdated", updated),
        res.c.resource_id.asc(),
    ]
    return plan


def _matching_ids(
    rtype: str, pairs: list[tuple[str, str]], compartment_patient: str | None, base_url: str
) -> Any:
    """Subquery: ids of live ``rtype`` resources matching ``pairs`` (inside the compartment)."""
    inner = compile_search(rtype, pairs, compartment_patient=compartment_patient, base_url=base_url)
    return select(res.c.resource_id).where(*inner.conditions)


def _chain_condition(
    rtype: str, key: str, value: str, compartment_patient: str | None, base_url: str
) -> Any:
    """One level of chaining: ``subject:Patient.name=x`` / ``subject.name=x``."""
    head, _, tail = key.partition(".")
    param, _, target = head.partition(":")
    pdef = SUPPORTED_SEARCH_PARAMS[rtype].get(param)
    if pdef is None or pdef.kind != "reference":
        raise BadRequest(
            f"chain {key!r}: {param!r} is not a reference parameter of {rtype}", expression=[key]
        )
    if not tail or "." in tail.split(":")[0]:
        raise BadRequest(
            f"chain {key!r}: only one level of chaining is supported", expression=[key]
        )
    if target and (
        target not in SUPPORTED_SEARCH_PARAMS or (pdef.targets and target not in pdef.targets)
    ):
        raise BadRequest(f"chain {key!r}: {target!r} is not a target of {param}", expression=[key])
    candidates = [target] if target else list(pdef.targets or SUPPORTED_SEARCH_PARAMS)
    chained_name = tail.split(":")[0]
    common = ("_id", "_lastUpdated", "_tag")
    usable = [
        t
        for t in candidates
        if t in SUPPORTED_SEARCH_PARAMS
        and (chained_name in SUPPORTED_SEARCH_PARAMS[t] or chained_name in common)
    ]
    if not usable:
        raise BadRequest(
            f"chain {key!r}: {chained_name!r} is not a search parameter of "
            f"{', '.join(candidates[:5])}",
            expression=[key],
        )
    if not [v for v in value.split(",") if v]:
        return None
    options = [
        _owned(
            idx_reference,
            rtype,
            param,
            idx_reference.c.target_type == t,
            idx_reference.c.target_id.in_(
                _matching_ids(t, [(tail, value)], compartment_patient, base_url).scalar_subquery()
            ),
        )
        for t in usable
    ]
    return options[0] if len(options) == 1 else or_(*(o.as_exists() for o in options))


def _has_condition(
    rtype: str, key: str, value: str, compartment_patient: str | None, base_url: str
) -> Any:
    """``_has:Observation:patient:code=x``: ``rtype`` resources that an Observation matching
    ``code=x`` references through its ``patient`` parameter (one level)."""
    parts = key.split(":")
    if len(parts) != 4 or not all(parts):
        raise BadRequest(
            f"{key!r}: expected _has:Type:reference-param:search-param", expression=[key]
        )
    _, source, param, criterion = parts
    defs = SUPPORTED_SEARCH_PARAMS.get(source)
    if defs is None:
        raise BadRequest(f"{key!r}: {source!r} is not a supported type", expression=[key])
    pdef = defs.get(param)
    if pdef is None or pdef.kind != "reference" or (pdef.targets and rtype not in pdef.targets):
        raise BadRequest(
            f"{key!r}: {param!r} is not a reference parameter of {source} pointing at {rtype}",
            expression=[key],
        )
    if criterion.startswith("_has"):
        raise BadRequest(f"{key!r}: nested _has is not supported", expression=[key])
    sources = _matching_ids(source, [(criterion, value)], compartment_patient, base_url)
    referenced = select(idx_reference.c.target_id).where(
        idx_reference.c.resource_type == source,
        idx_reference.c.param == param,
        idx_reference.c.target_type == rtype,
        idx_reference.c.resource_id.in_(sources.scalar_subquery()),
    )
    return res.c.resource_id.in_(referenced.scalar_subquery())


def is_known_param(rtype: str, key: str) -> bool:
    """Would ``compile_search`` recognise ``key`` (name and modifier) for ``rtype``? Values are
    not checked. For ``Prefer: handling=lenient``, which drops unknown parameters."""
    defs = SUPPORTED_SEARCH_PARAMS.get(rtype, {})
    if key in RESULT_PARAMS or key in ("_summary", "_revinclude"):
        return True
    if key.startswith("_has:"):
        return True  # checked (and refused when wrong) like any other parameter
    head = key.split(":")[0]
    if "." in head or ("." in key and ":" in key.split(".")[0]):
        param = key.split(".")[0].split(":")[0]
        pdef = defs.get(param)
        return pdef is not None and pdef.kind == "reference"
    name, _, modifier = key.partition(":")
    pdef = defs.get(name)
    if pdef is None:
        return False
    if not modifier or modifier in MODIFIERS[pdef.kind]:
        return True
    return pdef.kind == "reference" and modifier in SUPPORTED_SEARCH_PARAMS


def _result_param(plan: SearchPlan, key: str, value: str) -> None:
    if key == "_count":
        plan.count = min(_int_param("_count", value, minimum=0), MAX_COUNT)
    elif key == "_offset":
        plan.offset = _int_param("_offset", value, minimum=0)
    elif key == "_sort":
        _sort_keys(plan.rtype, value, res.c.last_updated)  # validate now, build at the end
        plan.sort = value
    elif key == "_include":
        plan.includes.extend(_include_specs(plan.rtype, value))
    elif key == "_revinclude":
        plan.revincludes.append(_revinclude_spec(value))
    elif key == "_total":
        if value not in ("none", "estimate", "accurate"):
            raise BadRequest(f"_total: unsupported value {value!r}", expression=["_total"])
    elif key == "_summary":
        if value != "count":
            raise BadRequest(
                f"_summary={value!r} is not supported (only _summary=count)",
                expression=["_summary"],
            )
        plan.count = 0
    # _format is content negotiation, handled by the HTTP layer
