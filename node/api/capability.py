"""The node's CapabilityStatement, generated from the store's supported-parameter table (pure).

Nothing here is hand-listed per type: a type or search parameter appears exactly when the store
supports it (``node.store.search_params.SUPPORTED_SEARCH_PARAMS``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from node.auth.discovery import oauth_uris_extension
from node.store.search_params import SUPPORTED_SEARCH_PARAMS, SearchParamDef

__all__ = [
    "capability_statement",
    "with_oauth_uris",
    "TYPE_INTERACTIONS",
    "SYSTEM_INTERACTIONS",
]

TYPE_INTERACTIONS = (
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "create",
    "search-type",
)
PATCH_FORMATS = ("application/json-patch+json", "application/merge-patch+json")
SYSTEM_INTERACTIONS = ("transaction", "batch")
_SYSTEM_DOCS = {
    "transaction": (
        "all or nothing; fullUrls unique (bdl-7) and every urn:uuid/urn:oid reference must match "
        "an entry's fullUrl (else 400/422, nothing stored); an Idempotency-Key header makes a "
        "retry with the same key and Bundle return the first response without writing again "
        "(same key, other Bundle: 422)"
    ),
    "batch": "entries applied one by one, each with its own status/outcome",
}
_SPECIAL_TYPES = {"_id": "token", "_lastUpdated": "date"}
_SERVER_VERSION = "0.1.0"
# Result-control and shaping parameters every search takes (name → FHIR type, documentation).
_RESULT_PARAMS = {
    "_count": ("number", "page size (default 50, at most 1000)"),
    "_offset": ("number", "paging offset (next/previous links)"),
    "_sort": ("string", "_id, _lastUpdated, date, string and token parameters; - descends"),
    "_include": ("special", "Type:param[:Target], or * for every reference parameter"),
    "_revinclude": ("special", "Source:param[:Target]"),
    "_total": ("token", "none | estimate | accurate (always exact)"),
    "_summary": ("token", "true | text | data | count | false"),
    "_elements": ("string", "top-level elements to return"),
    "_has": ("special", "_has:Type:reference-param:search-param (one level)"),
    "_format": ("token", "json / application/fhir+json only; xml → 406"),
    "_pretty": ("token", "true | false"),
}
_EXPORT_DOC = (
    "Bulk Data async pattern: Prefer: respond-async; _type, _since, _outputFormat (NDJSON); "
    "exports exactly what the token's searches return (patient tokens: their compartment); "
    "status at Content-Location, files need the same bearer token"
)
_SEARCH_DOC = (
    "Modifiers: string :exact :contains; token :not :text (the codes' display text and "
    "CodeableConcept.text, as a string search) :in :not-in (a ValueSet this node holds, by "
    "canonical url[|version] or ValueSet/id: its expansion.contains, else its "
    "compose.include.concept lists; a filter, valueSet-only include, exclude or unknown "
    "ValueSet is a 400); every kind but composite :missing; reference "
    ":Type. Composite parameters (type composite) take code$value; component-code-value-quantity "
    "matches the code and value of one component. "
    "Prefixes eq ne gt lt ge le sa eb ap (dates, quantities). Chains one level deep "
    "(subject:Patient.name=…). POST Type/_search takes the same parameters as a form. "
    "Prefer: handling=lenient drops unknown parameters (reported in an outcome entry); strict "
    "(default) refuses them with 400. Not supported (400): :below, :above, "
    ":identifier, :of-type modifiers, any modifier on _id and _lastUpdated, :text on "
    "non-token parameters, chains of two or more "
    "levels, nested _has."
)


def _param_type(param: SearchParamDef) -> str:
    if param.kind == "special":
        return _SPECIAL_TYPES.get(param.name, "special")
    return param.kind


def _search_param(param: SearchParamDef) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": param.name, "type": _param_type(param)}
    doc = param.description or (", ".join(param.paths) if param.paths else "")
    if param.targets:
        doc = f"{doc} (→ {', '.join(param.targets)})" if doc else f"→ {', '.join(param.targets)}"
    if doc:
        entry["documentation"] = doc
    return entry


def _resource(
    rtype: str,
    params: Mapping[str, SearchParamDef],
    table: Mapping[str, Mapping[str, SearchParamDef]],
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "type": rtype,
        "interaction": [{"code": code} for code in TYPE_INTERACTIONS],
        "versioning": "versioned",
        "readHistory": True,
        "updateCreate": True,
        "conditionalCreate": True,
        "conditionalRead": "not-supported",
        "conditionalUpdate": True,
        "conditionalDelete": "single",
        "referencePolicy": ["literal", "local", "enforced"],
        "searchParam": [_search_param(p) for p in params.values()],
    }
    includes = [f"{rtype}:{p.name}" for p in params.values() if p.kind == "reference"]
    if includes:
        resource["searchInclude"] = [*includes, "*"]
    revincludes = [
        f"{source}:{p.name}"
        for source, source_params in sorted(table.items())
        for p in source_params.values()
        if p.kind == "reference" and (not p.targets or rtype in p.targets)
    ]
    if revincludes:
        resource["searchRevInclude"] = revincludes
    operations = [
        {
            "name": "validate",
            "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
            "documentation": "POST the resource (or Parameters.resource); nothing is stored",
        }
    ]
    if rtype == "Observation":
        operations.append(
            {
                "name": "lastn",
                "definition": "http://hl7.org/fhir/OperationDefinition/Observation-lastn",
                "documentation": "patient (required), code, category, date, max (1..100)",
            }
        )
    if rtype == "Group":
        operations.insert(
            0,
            {
                "name": "export",
                "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export",
                "documentation": f"Group/[id]/$export: the Patient members. {_EXPORT_DOC}",
            },
        )
    resource["operation"] = operations
    if rtype == "Patient":
        resource["operation"] = [
            {
                "name": "everything",
                "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                "documentation": (
                    "GET or POST (form or Parameters); honours _since, _type, _count/_offset "
                    "(paged with next links), start/end (care dates; undated resources stay)"
                ),
            },
            {
                "name": "export",
                "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export",
                "documentation": _EXPORT_DOC,
            },
            *operations,
        ]
    return resource


def capability_statement(
    *,
    base_url: str,
    name: str,
    date: str,
    table: Mapping[str, Mapping[str, SearchParamDef]] = SUPPORTED_SEARCH_PARAMS,
    cors: bool = False,
) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "kind": "instance",
        "software": {"name": "IPJMS node", "version": _SERVER_VERSION},
        "implementation": {"description": name, "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": list(PATCH_FORMATS),
        "rest": [
            {
                "mode": "server",
                "security": {
                    "extension": [oauth_uris_extension(base_url.removesuffix("/fhir"))],
                    "cors": cors,
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ]
                        }
                    ],
                    "description": (
                        "SMART App Launch 2 (standalone and EHR launch, PKCE S256; discovery at "
                        "/fhir/.well-known/smart-configuration) and SMART Backend Services; "
                        "OAuth2 bearer tokens from POST /auth/token with SMART v1/v2 scopes"
                    ),
                },
                "resource": [
                    _resource(rtype, params, table) for rtype, params in sorted(table.items())
                ],
                "interaction": [
                    {"code": code, "documentation": _SYSTEM_DOCS[code]}
                    for code in SYSTEM_INTERACTIONS
                ],
                "searchParam": [
                    {"name": name, "type": kind, "documentation": doc}
                    for name, (kind, doc) in _RESULT_PARAMS.items()
                ],
                "documentation": _SEARCH_DOC,
                "operation": [
                    {
                        "name": "export",
                        "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
                        "documentation": _EXPORT_DOC,
                    }
                ],
            }
        ],
    }


def with_oauth_uris(capability: dict[str, Any], base_url: str) -> dict[str, Any]:
    """``capability`` with its ``oauth-uris`` extension pointing at ``base_url`` (the node as
    this client reached it); the stored statement is not changed."""
    rest = dict(capability["rest"][0])
    rest["security"] = {**rest["security"], "extension": [oauth_uris_extension(base_url)]}
    return {**capability, "rest": [rest, *capability["rest"][1:]]}
