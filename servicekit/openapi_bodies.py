"""Request-body descriptions for OpenAPI, for routes that read their body themselves (FHIR
resources, consent Parameters, model uploads): ``@router.post(..., openapi_extra=fhir_body())``.

The routes validate bodies with the FHIR models or their own rules; these schemas only tell
clients and fuzzers (tests/ops/test_api_fuzz.py) what shape to send: a JSON object with a
``resourceType``, or the named fields of a plain JSON body, or a form.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["fhir_body", "json_body", "form_body", "FHIR_RESOURCE_SCHEMA"]

FHIR_RESOURCE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["resourceType"],
    "properties": {"resourceType": {"type": "string"}, "id": {"type": "string"}},
}


def _body(media: str, schema: Mapping[str, Any], required: bool = True) -> dict[str, Any]:
    return {"requestBody": {"required": required, "content": {media: {"schema": dict(schema)}}}}


def fhir_body(
    resource_type: str | None = None,
    properties: Mapping[str, Any] | None = None,
    *,
    required: bool = True,
) -> dict[str, Any]:
    """A FHIR resource (``application/fhir+json``), of ``resource_type`` if given."""
    schema: dict[str, Any] = {
        "type": "object",
        "required": ["resourceType"],
        "properties": {
            "resourceType": {"type": "string"}
            if resource_type is None
            else {"type": "string", "enum": [resource_type]},
            **(properties or {}),
        },
    }
    return _body("application/fhir+json", schema, required)


def json_body(
    properties: Mapping[str, Any], required_fields: tuple[str, ...] = (), *, required: bool = True
) -> dict[str, Any]:
    """A plain JSON object with the given properties (JSON Schema)."""
    schema = {"type": "object", "properties": dict(properties)}
    if required_fields:
        schema["required"] = list(required_fields)
    return _body("application/json", schema, required)


def form_body(fields: Mapping[str, Any], required_fields: tuple[str, ...] = ()) -> dict[str, Any]:
    """An ``application/x-www-form-urlencoded`` form (OAuth2 token requests)."""
    schema: dict[str, Any] = {"type": "object", "properties": dict(fields)}
    if required_fields:
        schema["required"] = list(required_fields)
    return _body("application/x-www-form-urlencoded", schema)
