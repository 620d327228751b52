"""PATCH bodies applied to a resource (pure): JSON Patch (RFC 6902, ``application/json-patch+json``)
and JSON Merge Patch (RFC 7386, ``application/merge-patch+json``; a plain JSON object sent as
``application/json`` is read as a merge patch, which is what e.g. fhirpy's ``patch()`` sends).
FHIRPath Patch (a ``Parameters`` body) is refused with 415.

A malformed patch is a 400 naming the operation; a failed ``test`` operation is a 422; the
patched resource is then validated like any update, so nothing is stored unless all of it holds.
"""

from __future__ import annotations

import copy
from typing import Any

from servicekit.outcome import BadRequest, FhirError, Unprocessable

__all__ = ["apply_patch", "json_patch", "merge_patch", "PATCH_TYPES", "UnsupportedPatch"]

PATCH_TYPES = (
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/json",
    "application/fhir+json",
)
_OPS = ("add", "remove", "replace", "move", "copy", "test")


class UnsupportedPatch(FhirError):
    status, code = 415, "not-supported"


def _pointer(path: Any, where: str) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise BadRequest(f"{where}: path must be a JSON Pointer such as /name/0/family")
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def _index(container: list[Any], step: str, where: str, *, for_add: bool = False) -> int:
    if for_add and step == "-":
        return len(container)
    if not step.isdigit() or (step != "0" and step.startswith("0")):
        raise BadRequest(f"{where}: {step!r} is not an array index")
    i = int(step)
    if i > len(container) or (i == len(container) and not for_add):
        raise BadRequest(f"{where}: index {i} is out of range")
    return i


def _parent(doc: Any, steps: list[str], where: str) -> tuple[Any, str]:
    if not steps:
        raise BadRequest(f"{where}: the whole resource cannot be the target")
    node = doc
    for step in steps[:-1]:
        if isinstance(node, dict) and step in node:
            node = node[step]
        elif isinstance(node, list):
            node = node[_index(node, step, where)]
        else:
            raise BadRequest(f"{where}: path does not exist")
    return node, steps[-1]


def _get(doc: Any, steps: list[str], where: str) -> Any:
    node = doc
    for step in steps:
        if isinstance(node, dict) and step in node:
            node = node[step]
        elif isinstance(node, list):
            node = node[_index(node, step, where)]
        else:
            raise BadRequest(f"{where}: path does not exist")
    return node


def _add(doc: Any, steps: list[str], value: Any, where: str) -> None:
    parent, last = _parent(doc, steps, where)
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, where, for_add=True), value)
    else:
        raise BadRequest(f"{where}: cannot add into a primitive value")


def _remove(doc: Any, steps: list[str], where: str) -> Any:
    parent, last = _parent(doc, steps, where)
    if isinstance(parent, dict):
        if last not in parent:
            raise BadRequest(f"{where}: path does not exist")
        return parent.pop(last)
    if isinstance(parent, list):
        return parent.pop(_index(parent, last, where))
    raise BadRequest(f"{where}: path does not exist")


def json_patch(resource: dict[str, Any], operations: Any) -> dict[str, Any]:
    if not isinstance(operations, list) or not operations:
        raise BadRequest("a JSON Patch is a non-empty array of operations")
    doc = copy.deepcopy(resource)
    for n, op in enumerate(operations):
        where = f"patch operation {n}"
        if not isinstance(op, dict) or op.get("op") not in _OPS:
            raise BadRequest(f"{where}: op must be one of {', '.join(_OPS)}")
        kind = op["op"]
        where = f"{where} ({kind})"
        steps = _pointer(op.get("path"), where)
        if kind in ("add", "replace", "test") and "value" not in op:
            raise BadRequest(f"{where}: value is required")
        if kind == "add":
            _add(doc, steps, copy.deepcopy(op["value"]), where)
        elif kind == "remove":
            _remove(doc, steps, where)
        elif kind == "replace":
            _get(doc, steps, where)  # must exist
            _remove(doc, steps, where)
            _add(doc, steps, copy.deepcopy(op["value"]), where)
        elif kind in ("move", "copy"):
            source = _pointer(op.get("from"), where)
            if kind == "move" and steps[: len(source)] == source:
                raise BadRequest(f"{where}: cannot move a value into itself")
            value = _remove(doc, source, where) if kind == "move" else _get(doc, source, where)
            _add(doc, steps, copy.deepcopy(value), where)
        elif _get(doc, steps, where) != op["value"]:
            raise Unprocessable(f"{where}: test failed at {op.get('path')}")
    if not isinstance(doc, dict):
        raise BadRequest("the patched document is not a resource")
    return doc


def merge_patch(resource: dict[str, Any], patch: Any) -> dict[str, Any]:
    if not isinstance(patch, dict) or not patch:
        raise BadRequest("a JSON Merge Patch is a non-empty JSON object")

    def merge(target: Any, change: Any) -> Any:
        if not isinstance(change, dict):
            return copy.deepcopy(change)
        out = dict(target) if isinstance(target, dict) else {}
        for key, value in change.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = merge(out.get(key), value)
        return out

    result = merge(resource, patch)
    assert isinstance(result, dict)
    return result


def apply_patch(resource: dict[str, Any], content_type: str, body: Any) -> dict[str, Any]:
    """``resource`` with the patch applied; the result keeps ``resourceType`` and ``id``."""
    if content_type == "application/json-patch+json" or (
        content_type in ("application/json", "application/fhir+json") and isinstance(body, list)
    ):
        patched = json_patch(resource, body)
    elif isinstance(body, dict) and body.get("resourceType") == "Parameters":
        raise UnsupportedPatch(
            "FHIRPath Patch (a Parameters body) is not supported; send a "
            "JSON Patch (application/json-patch+json) or a merge patch"
        )
    elif content_type in (
        "application/merge-patch+json",
        "application/json",
        "application/fhir+json",
    ):
        patched = merge_patch(resource, body)
    else:
        raise UnsupportedPatch(
            f"PATCH content type {content_type!r} is not supported; send "
            "application/json-patch+json or application/merge-patch+json"
        )
    for element in ("resourceType", "id"):
        if patched.get(element) != resource.get(element):
            raise BadRequest(f"a patch may not change {element}")
    return patched
