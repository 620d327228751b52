"""The token modifiers ``:in`` / ``:not-in`` (issue 17): the codes of a ValueSet the node holds.

``code:in=<canonical url>`` or ``code:in=ValueSet/<id>`` matches resources whose coded value is
one of the ValueSet's (system, code) pairs. The pairs come from ``ValueSet.expansion.contains``
(nested ``contains`` included) when the ValueSet carries an expansion, else from the
``compose.include[].concept[]`` enumerations. There is no terminology server behind the node, so
what would need one is refused with a :class:`BadRequest` naming the parameter — never answered
as an empty set: an include by ``filter`` or only by ``valueSet``, an include of a whole code
system (no concepts), ``compose.exclude``, a ValueSet enumerating no codes, and an unknown or
ambiguous ValueSet.

:func:`value_set_codes` is pure; :func:`resolve_value_sets` reads the ValueSets a query names
(one read each) and hands :func:`node.store.search_query.compile_search` the pairs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from sqlalchemy import Connection, select

from node.store.tables import resource as res
from servicekit.outcome import BadRequest, Gone, NotFound

__all__ = ["VALUE_SET_MODIFIERS", "Codes", "value_set_codes", "resolve_value_sets"]

VALUE_SET_MODIFIERS = frozenset({"in", "not-in"})
Codes = frozenset[tuple[str, str]]  # (system, code)


def _refuse(param: str, ref: str, why: str) -> BadRequest:
    return BadRequest(f"{param}={ref}: {why}", expression=[param])


def _contains(entries: Any) -> Iterator[dict[str, Any]]:
    for entry in entries or []:
        if isinstance(entry, dict):
            yield entry
            yield from _contains(entry.get("contains"))


def value_set_codes(vs: Mapping[str, Any], param: str, ref: str) -> Codes:
    """The (system, code) pairs of ``vs``; BadRequest naming ``param`` when they cannot be known
    without a terminology server."""
    expansion = vs.get("expansion")
    if isinstance(expansion, dict) and expansion.get("contains"):
        codes = {
            (e["system"], e["code"])
            for e in _contains(expansion["contains"])
            if isinstance(e.get("system"), str) and isinstance(e.get("code"), str)
        }
        if not codes:
            raise _refuse(param, ref, "the ValueSet's expansion lists no system|code")
        return frozenset(codes)
    compose = vs.get("compose")
    if not isinstance(compose, dict) or not compose.get("include"):
        raise _refuse(param, ref, "the ValueSet has neither an expansion nor compose.include")
    if compose.get("exclude"):
        raise _refuse(param, ref, "compose.exclude needs a terminology server (not supported)")
    out: set[tuple[str, str]] = set()
    for include in compose["include"]:
        if include.get("filter"):
            raise _refuse(param, ref, "compose.include.filter needs a terminology server")
        system, concepts = include.get("system"), include.get("concept")
        if not isinstance(system, str) or not concepts:
            what = "only valueSet" if include.get("valueSet") else "no concept list"
            raise _refuse(
                param,
                ref,
                f"a compose.include with {what} cannot be expanded here "
                "(enumerate its concepts or store an expansion)",
            )
        out |= {(system, c["code"]) for c in concepts if isinstance(c.get("code"), str)}
    if not out:
        raise _refuse(param, ref, "the ValueSet enumerates no codes")
    return frozenset(out)


def _find(conn: Connection, param: str, ref: str) -> Mapping[str, Any]:
    from node.store.search_query import compile_search  # the url search, as any client's
    from node.store.writes import read_current

    if ref.startswith("ValueSet/"):
        try:
            return read_current(conn, "ValueSet", ref.removeprefix("ValueSet/"))
        except (NotFound, Gone, BadRequest):
            raise _refuse(param, ref, "no such ValueSet on this node") from None
    url, bar, version = ref.partition("|")
    pairs = [("url", url)] + ([("version", version)] if bar else [])
    plan = compile_search("ValueSet", pairs)
    found: list[str] = list(
        conn.scalars(select(res.c.resource_id).where(*plan.conditions).limit(2))
    )
    if not found:
        raise _refuse(param, ref, "no ValueSet with this url on this node")
    if len(found) > 1:
        raise _refuse(param, ref, "more than one ValueSet has this url (name url|version)")
    return read_current(conn, "ValueSet", found[0])


def resolve_value_sets(conn: Connection, params: list[tuple[str, str]]) -> dict[str, Codes]:
    """ValueSet reference → its codes, for every ``:in`` / ``:not-in`` value in ``params``."""
    out: dict[str, Codes] = {}
    for key, value in params:
        if "." in key or key.startswith("_has:"):
            continue  # chains and _has refuse these modifiers themselves
        _, _, modifier = key.partition(":")
        if modifier not in VALUE_SET_MODIFIERS:
            continue
        for ref in (v for v in value.split(",") if v):
            if ref not in out:
                out[ref] = value_set_codes(_find(conn, key, ref), key, ref)
    return out
