"""The one place resources are validated: FHIR R4 structure via ``fhir.resources.R4B``, then the
required terminology bindings of :mod:`node.store.bindings` (which pydantic does not check).

Errors name the resource type, the element path and the problem. Reference *resolution* (does
``Patient/123`` exist in this store?) needs the database and lives in the write engine
(:mod:`node.store.transactions`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

from node.store.bindings import binding_violations
from node.store.search_params import SUPPORTED_SEARCH_PARAMS
from servicekit.input_checks import text_problem
from servicekit.outcome import BadRequest

__all__ = [
    "EXTRA_CHECKS",
    "preload_models",
    "validate_resource",
    "check_type",
    "ID_RE",
    "check_id",
    "valid_id",
    "text_violations",
]

ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")

# Checks other areas add (node/care: units and plausible values of clinical readings). Each gets a
# structurally valid resource and returns (element path, message) problems; any → 400 "value".
EXTRA_CHECKS: list[Callable[[dict[str, Any]], list[tuple[str, str]]]] = []


@cache
def _model_class(rtype: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    return get_fhir_model_class(rtype)


@dataclass(frozen=True)
class ElementInfo:
    """A top-level element of a resource type: its JSON keys (a choice element ``deceased[x]``
    has one per type: ``deceasedBoolean``, ``deceasedDateTime``) and whether FHIR marks it
    ``isSummary``."""

    keys: tuple[str, ...]
    summary: bool


@cache
def resource_elements(rtype: str) -> dict[str, ElementInfo]:
    """Top-level elements of ``rtype`` by name (for ``_elements`` and ``_summary``), from the
    R4B model the store validates with."""
    found: dict[str, tuple[list[str], bool]] = {}
    for field_name, info in _model_class(rtype).model_fields.items():
        extra = info.json_schema_extra
        if not isinstance(extra, dict) or not extra.get("element_property"):
            continue
        key = info.alias or field_name
        name = str(extra.get("one_of_many") or key)
        keys, summary = found.get(name, ([], False))
        keys.append(key)
        found[name] = (keys, summary or bool(extra.get("summary_element_property")))
    return {name: ElementInfo(tuple(keys), summary) for name, (keys, summary) in found.items()}


def preload_models(types: Iterable[str] | None = None) -> None:
    """Import the model of each of ``types`` (default: every resource type this store keeps)
    now, rather than during the first request that needs it.

    Every stored type: about 0.5 CPU-s. Only the stored types: importing all ~190 R4B modules
    took 2.5 s for ~145 types the store never keeps. The element types the stored ones use
    (CodeableConcept, Period, …) still load on first use; measured on 230 Synthea resources that
    costs ~60 ms once per process (first validation pass 0.14 s, second 0.08 s)."""
    for rtype in SUPPORTED_SEARCH_PARAMS if types is None else types:
        _model_class(rtype)


def check_type(rtype: str) -> None:
    """BadRequest unless ``rtype`` is a resource type this store keeps."""
    if rtype not in SUPPORTED_SEARCH_PARAMS:
        raise BadRequest(f"resource type {rtype!r} is not supported by this server")


def valid_id(rid: object) -> bool:
    """A FHIR id (1-64 of A-Z a-z 0-9 - .) that is not made of dots only: ``.`` and ``..``
    match FHIR's pattern but name no resource (they are path steps)."""
    return isinstance(rid, str) and ID_RE.match(rid) is not None and rid.strip(".") != ""


def check_id(rid: str) -> None:
    if not valid_id(rid):
        raise BadRequest(
            f"invalid resource id {rid!r} (FHIR ids are 1-64 of A-Z a-z 0-9 - ., not only dots)"
        )


def _has_bad_text(resource: Any) -> bool:
    todo: list[Any] = [resource]
    while todo:
        value = todo.pop()
        if isinstance(value, str):
            if text_problem(value) is not None:
                return True
        elif isinstance(value, dict):
            todo.extend(value.values())
        elif isinstance(value, list):
            todo.extend(value)
    return False


def text_violations(resource: dict[str, Any], limit: int = 5) -> list[tuple[str, str]]:
    """(path, problem) of string values that are not acceptable text: only whitespace, or a
    control character (FHIR ``string`` needs a non-whitespace character; control characters
    other than tab, CR, LF are refused). Iterative, so no nesting can exhaust the stack.
    The paths are built only for a resource that has such a value (issue 19: building a path
    for every element was 9% of a Synthea transaction's CPU in the store)."""
    if not _has_bad_text(resource):
        return []
    found: list[tuple[str, str]] = []
    todo: list[tuple[str, Any]] = [(str(resource.get("resourceType", "")), resource)]
    while todo and len(found) < limit:
        path, value = todo.pop()
        if isinstance(value, str):
            problem = text_problem(value)
            if problem is not None:
                found.append((path, problem))
        elif isinstance(value, dict):
            todo.extend((f"{path}.{k}", v) for k, v in value.items())
        elif isinstance(value, list):
            todo.extend((f"{path}[{i}]", v) for i, v in enumerate(value))
    return sorted(found)


def _describe(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}"
    return out


def validate_resource(resource: Any, *, expected_type: str | None = None) -> str:
    """Validate ``resource`` (a JSON object) as FHIR R4; returns its type. Raises BadRequest."""
    if not isinstance(resource, dict):
        raise BadRequest("a resource must be a JSON object")
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        raise BadRequest("resource has no resourceType")
    if expected_type is not None and rtype != expected_type:
        raise BadRequest(f"resourceType {rtype!r} does not match the URL's type {expected_type!r}")
    check_type(rtype)
    rid = resource.get("id")
    if rid is not None and not valid_id(rid):
        raise BadRequest(f"{rtype}.id: invalid id {rid!r}", expression=[f"{rtype}.id"])
    bad_text = text_violations(resource)
    if bad_text:
        raise BadRequest(
            f"invalid {rtype}: " + "; ".join(f"{path} {problem}" for path, problem in bad_text),
            expression=[path for path, _ in bad_text],
        )
    try:
        _model_class(rtype).model_validate(resource)
    except ValueError as exc:  # pydantic ValidationError is a ValueError
        errors = getattr(exc, "errors", None)
        if callable(errors):
            problems = []
            paths = []
            for err in errors()[:5]:
                path = rtype + _describe(tuple(err.get("loc", ())))
                paths.append(path)
                problems.append(f"{path}: {err.get('msg')}")
            raise BadRequest(f"invalid {rtype}: " + "; ".join(problems), expression=paths) from None
        raise BadRequest(f"invalid {rtype}: {exc}") from None
    violations = binding_violations(rtype, resource)
    if violations:
        raise BadRequest(
            f"invalid {rtype}: " + "; ".join(v.message for v in violations[:5]),
            expression=[v.path for v in violations[:5]],
            code="code-invalid",
        )
    for check in EXTRA_CHECKS:
        found = check(resource)
        if found:
            raise BadRequest(
                f"invalid {rtype}: " + "; ".join(message for _, message in found[:5]),
                expression=[path for path, _ in found[:5]],
                code="value",
            )
    return rtype
