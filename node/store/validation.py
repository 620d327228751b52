"""The one place resources are validated: FHIR R4 structure via ``fhir.resources.R4B``.

Errors name the resource type, the element path and the problem. Reference *resolution* (does
``Patient/123`` exist in this store?) needs the database and lives in the store; this module only
lists a resource's references.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from node.store.search_index import split_reference
from node.store.search_params import SUPPORTED_SEARCH_PARAMS
from trust.outcome import BadRequest

__all__ = [
    "preload_models",
    "validate_resource",
    "check_type",
    "local_references",
    "ID_RE",
    "check_id",
]

ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


@cache
def _model_class(rtype: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    return get_fhir_model_class(rtype)


def preload_models() -> None:
    """Import the R4B model class of every supported type now (about a second, once)."""
    for rtype in SUPPORTED_SEARCH_PARAMS:
        _model_class(rtype)


def check_type(rtype: str) -> None:
    """BadRequest unless ``rtype`` is a resource type this store keeps."""
    if rtype not in SUPPORTED_SEARCH_PARAMS:
        raise BadRequest(f"resource type {rtype!r} is not supported by this server")


def check_id(rid: str) -> None:
    if not ID_RE.match(rid):
        raise BadRequest(f"invalid resource id {rid!r} (FHIR ids are 1-64 of A-Z a-z 0-9 - .)")


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
    if rid is not None and (not isinstance(rid, str) or not ID_RE.match(rid)):
        raise BadRequest(f"{rtype}.id: invalid id {rid!r}", expression=[f"{rtype}.id"])
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
    return rtype


def local_references(
    node: Any, base_url: str = "", *, _skip_bundle: bool = True
) -> list[tuple[str, str, str]]:
    """Relative references ``(type, id, original)`` anywhere in a resource.

    Contained resources and the entries of a Bundle (a document carries its own contents) are
    not followed; ``#``, ``urn:`` and absolute URLs to other servers are not local references.
    """
    out: list[tuple[str, str, str]] = []

    def walk(n: Any) -> None:
        if isinstance(n, dict):
            for key, value in n.items():
                if key == "reference" and isinstance(value, str):
                    target = split_reference(value, base_url)
                    if target:
                        out.append((target[0], target[1], value))
                elif key != "contained":
                    walk(value)
        elif isinstance(n, list):
            for item in n:
                walk(item)

    if isinstance(node, dict) and node.get("resourceType") == "Bundle" and _skip_bundle:
        return out
    walk(node)
    return out
