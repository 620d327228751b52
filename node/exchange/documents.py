"""Pure functions on the FHIR content that crosses institutions (no I/O, unit-tested).

Outbound: :func:`filter_by_classes` keeps only the permitted resource types and
:func:`pack_document` wraps them in an IPS-style ``document`` Bundle (Composition LOINC 60591-5,
"Patient summary Document"). Inbound: :func:`carried_classes` names the data a document
carries (what its consent decision must permit) and :func:`prepare_import` turns a received
document into a transaction that lands every resource under a deterministic local id
(re-import = no change), points patient references at the local patient, drops references to
anything not shared, and marks each resource as coming from the other institution
(``meta.source``, ``meta.tag``) with a Provenance.
"""

from __future__ import annotations

import copy
import datetime as dt
import uuid
from collections.abc import Iterable
from typing import Any

from node.store.idempotency import derived_id, idempotent_request, identifier_criteria

__all__ = [
    "STRUCTURAL_TYPES",
    "EXCHANGE_TAG_SYSTEM",
    "TASK_ID_SYSTEM",
    "PSEUDONYM_SYSTEM",
    "filter_by_classes",
    "pack_document",
    "resources_of",
    "classes_of",
    "carried_classes",
    "TASK_UPDATE_FIELDS",
    "workflow_task",
    "workflow_only_problem",
    "local_id",
    "linked_patient",
    "prepare_import",
    "org_uri",
]

# Types every exchange document may carry whatever the consent classes: the document's own
# frame and the workflow/provenance records that describe the exchange itself.
STRUCTURAL_TYPES = frozenset({"Composition", "Task", "Provenance"})
EXCHANGE_TAG_SYSTEM = "https://ipjms.example.org/fhir/CodeSystem/exchange-origin"
TASK_ID_SYSTEM = "https://ipjms.example.org/fhir/sid/exchange-task"
PSEUDONYM_SYSTEM = "https://ipjms.example.org/fhir/sid/patient-pseudonym"
ORG_SYSTEM = "https://ipjms.example.org/fhir/sid/org"
IPS_LOINC = "60591-5"
_SECTION_CODES = {
    "Condition": ("11450-4", "Problem list"),
    "AllergyIntolerance": ("48765-2", "Allergies and adverse reactions"),
    "MedicationStatement": ("10160-0", "History of medication use"),
    "MedicationRequest": ("10160-0", "History of medication use"),
    "Immunization": ("11369-6", "History of immunizations"),
    "Observation": ("30954-2", "Relevant diagnostic tests/laboratory data"),
    "DiagnosticReport": ("30954-2", "Relevant diagnostic tests/laboratory data"),
    "Procedure": ("47519-4", "History of procedures"),
    "Encounter": ("46240-8", "History of encounters"),
    "CarePlan": ("18776-5", "Plan of care"),
    "ServiceRequest": ("18776-5", "Plan of care"),
    "Communication": ("51848-0", "Evaluation note"),
}


def org_uri(org_id: str) -> str:
    return f"urn:ipjms:org:{org_id}"


def filter_by_classes(
    resources: Iterable[dict[str, Any]], permitted: Iterable[str]
) -> list[dict[str, Any]]:
    """Only resources whose classes (:func:`classes_of`: their type and what they contain) are
    all permitted — the consent filter of the egress pipeline, the receiver's rule too."""
    allowed = set(permitted)
    return [r for r in resources if classes_of(r) <= allowed]


def pack_document(
    resources: list[dict[str, Any]],
    *,
    patient: dict[str, Any] | None,
    sender: str,
    title: str,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """An IPS-style document Bundle: Composition first, then the patient and the resources."""
    now = now or dt.datetime.now(dt.UTC)
    entries: list[dict[str, Any]] = []
    full: dict[tuple[str, str], str] = {}

    def add(res: dict[str, Any]) -> str:
        key = (res["resourceType"], str(res.get("id", "")))
        if key in full:
            return full[key]
        url = f"urn:uuid:{uuid.uuid4()}"
        full[key] = url
        entries.append({"fullUrl": url, "resource": res})
        return url

    patient_url = add(patient) if patient is not None else None
    sections: dict[str, dict[str, Any]] = {}
    for res in resources:
        if res.get("resourceType") == "Patient":
            continue
        url = add(res)
        code, name = _SECTION_CODES.get(res["resourceType"], ("", res["resourceType"]))
        section = sections.setdefault(
            name,
            {
                "title": name,
                **(
                    {"code": {"coding": [{"system": "http://loinc.org", "code": code}]}}
                    if code
                    else {}
                ),
                "entry": [],
            },
        )
        section["entry"].append({"reference": url})
    composition = {
        "resourceType": "Composition",
        "id": str(uuid.uuid4()),
        "status": "final",
        "type": {
            "coding": [
                {
                    "system": "http://loinc.org",
                    "code": IPS_LOINC,
                    "display": "Patient summary Document",
                }
            ]
        },
        "date": now.isoformat(),
        "author": [{"identifier": {"system": ORG_SYSTEM, "value": sender}, "display": sender}],
        "title": title,
    }
    if sections:
        composition["section"] = list(sections.values())
    if patient_url:
        composition["subject"] = {"reference": patient_url}
    composition_entry = {"fullUrl": f"urn:uuid:{composition['id']}", "resource": composition}
    return {
        "resourceType": "Bundle",
        "type": "document",
        "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{uuid.uuid4()}"},
        "timestamp": now.isoformat(),
        "entry": [composition_entry, *entries],
    }


CONSENT_DECISION_EXTENSION = "https://ipjms.example.org/fhir/StructureDefinition/consent-decision"


def attach_decision(document: dict[str, Any], token: str) -> None:
    """Carry the registry's signed decision inside the (encrypted) document Bundle."""
    meta = document.setdefault("meta", {})
    meta.setdefault("extension", []).append(
        {"url": CONSENT_DECISION_EXTENSION, "valueString": token}
    )


def decision_of(document: dict[str, Any]) -> str | None:
    """The signed consent decision a document Bundle carries (None: none, or not one)."""
    meta = document.get("meta")
    found = [
        e.get("valueString")
        for e in (meta.get("extension", []) if isinstance(meta, dict) else [])
        if isinstance(e, dict) and e.get("url") == CONSENT_DECISION_EXTENSION
    ]
    return found[0] if len(found) == 1 and isinstance(found[0], str) else None


PATIENT_PSEUDONYM_EXTENSION = "https://ipjms.example.org/fhir/StructureDefinition/patient-pseudonym"


def attach_patient(document: dict[str, Any], regional_pseudonym: str) -> None:
    """Carry the patient's regional pseudonym inside the (encrypted) payload: the clear header
    has only the routing pseudonym of this pair of organisations (``trust.pseudonym``)."""
    meta = document.setdefault("meta", {})
    meta.setdefault("extension", []).append(
        {"url": PATIENT_PSEUDONYM_EXTENSION, "valueString": regional_pseudonym}
    )


def patient_of(document: dict[str, Any]) -> str | None:
    """The regional pseudonym a payload carries (None: none, or more than one)."""
    meta = document.get("meta")
    found = [
        e.get("valueString")
        for e in (meta.get("extension", []) if isinstance(meta, dict) else [])
        if isinstance(e, dict) and e.get("url") == PATIENT_PSEUDONYM_EXTENSION
    ]
    return found[0] if len(found) == 1 and isinstance(found[0], str) else None


def resources_of(document: dict[str, Any]) -> list[dict[str, Any]]:
    if document.get("resourceType") != "Bundle" or not isinstance(document.get("entry"), list):
        raise ValueError("payload is not a Bundle with entries")
    out = []
    for entry in document["entry"]:
        res = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(res, dict) or not isinstance(res.get("resourceType"), str):
            raise ValueError("a Bundle entry has no resource")
        out.append(res)
    return out


def classes_of(resource: dict[str, Any]) -> set[str]:
    """The data classes one resource discloses: its type and the types of the resources it
    contains (``contained``; anything there without a type counts as an unknown class)."""
    out = {str(resource.get("resourceType"))}
    contained = resource.get("contained")
    for inner in contained if isinstance(contained, list) else [contained]:
        if inner is not None:
            kind = inner.get("resourceType") if isinstance(inner, dict) else None
            out.add(kind if isinstance(kind, str) and kind else "(untyped contained)")
    return out


def carried_classes(document: dict[str, Any]) -> list[str]:
    """The data classes a document Bundle carries (:func:`classes_of` its entries) but the
    structural ones — what the consent decision inside must permit (the clear header names no
    classes, issue 23). Raises ValueError when it is not a document Bundle."""
    types: set[str] = set()
    for res in resources_of(document):
        types |= classes_of(res)
    return sorted(types - STRUCTURAL_TYPES)


# What a status update (a ``task-update`` carrying no consent decision) may hold: the Task's
# workflow fields — what :func:`workflow_task` keeps, the node's own sender sends nothing else —
# in a document frame as :func:`pack_document` writes it, without narrative. No contained
# resources, notes, inputs/outputs, descriptions or extensions: those would be clinical data
# disclosed without consent.
TASK_UPDATE_FIELDS = frozenset(
    {
        "resourceType",
        "id",
        "meta",
        "identifier",
        "status",
        "businessStatus",
        "statusReason",
        "intent",
        "for",
        "requester",
        "owner",
        "authoredOn",
        "lastModified",
    }
)
_UPDATE_META_FIELDS = frozenset(
    {"versionId", "lastUpdated", "source", "tag", "security", "profile"}
)
_FRAME_FIELDS = frozenset(
    {"resourceType", "id", "status", "type", "date", "author", "title", "section"}
)
_FRAME_SECTION_FIELDS = frozenset({"title", "code", "entry"})


def workflow_task(task: dict[str, Any]) -> dict[str, Any]:
    """What of ``task`` a status update sends: its workflow fields only."""
    out = {k: copy.deepcopy(v) for k, v in task.items() if k in TASK_UPDATE_FIELDS}
    if isinstance(out.get("meta"), dict):
        out["meta"] = {k: v for k, v in out["meta"].items() if k in _UPDATE_META_FIELDS}
    return out


def _beyond(node: Any, allowed: frozenset[str], path: str) -> list[str]:
    """The fields of ``node`` that ``allowed`` does not name (``path`` itself: not an object)."""
    if not isinstance(node, dict):
        return [path]
    return [f"{path}.{k}" for k in node if k not in allowed]


def workflow_only_problem(document: dict[str, Any]) -> tuple[str, ...]:
    """Why a document needing no consent decision is more than a status update (empty: it is
    not): the names of the fields or types beyond one Task's workflow fields and the document
    frame. Names only — never a value (they are logged; the caller's refusal names none)."""
    extra: list[str] = []
    resources = resources_of(document)
    tasks = [r for r in resources if r["resourceType"] == "Task"]
    frames = [r for r in resources if r["resourceType"] == "Composition"]
    if len(tasks) != 1:
        extra.append(f"{len(tasks)} Tasks")
    if len(frames) > 1:
        extra.append(f"{len(frames)} Compositions")
    extra += [
        r["resourceType"] for r in resources if r["resourceType"] not in ("Task", "Composition")
    ]
    for task in tasks:
        extra += _beyond(task, TASK_UPDATE_FIELDS, "Task")
        if "meta" in task:
            extra += _beyond(task["meta"], _UPDATE_META_FIELDS, "Task.meta")
    for frame in frames:
        extra += _beyond(frame, _FRAME_FIELDS, "Composition")
        sections = frame.get("section", [])
        for section in sections if isinstance(sections, list) else [sections]:
            extra += _beyond(section, _FRAME_SECTION_FIELDS, "Composition.section")
    return tuple(sorted(set(extra)))


def local_id(sender: str, rtype: str, original_id: str) -> str:
    """The deterministic local id of a resource received from ``sender`` (so a re-import is
    "already here" by the store's one rule: same id, same content, no new version)."""
    return derived_id("x-", sender, rtype, original_id)


def _walk_references(node: Any, fix: Any) -> Any:
    """A copy of ``node`` (new dicts and lists all the way down) with every Reference passed
    through ``fix``; ``node`` itself is not changed."""
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            return fix(node)
        return {k: _walk_references(v, fix) for k, v in node.items()}
    if isinstance(node, list):
        return [_walk_references(v, fix) for v in node]
    return node


def linked_patient(shared: dict[str, Any] | None, pseudonym: str) -> dict[str, Any]:
    """The local Patient made for a patient first met in a document: what was shared (without
    its id, meta, narrative and links) or a stub, carrying the regional pseudonym it stands for
    and tagged as linked by the exchange."""
    body: dict[str, Any] = {"resourceType": "Patient"}
    if shared:
        body = {k: v for k, v in shared.items() if k not in ("id", "meta", "text", "link")}
    body["identifier"] = [
        *[i for i in body.get("identifier", []) if i.get("system") != PSEUDONYM_SYSTEM],
        {"system": PSEUDONYM_SYSTEM, "value": pseudonym},
    ]
    body["meta"] = {"tag": [{"system": EXCHANGE_TAG_SYSTEM, "code": "linked"}]}
    return body


def prepare_import(
    document: dict[str, Any],
    *,
    sender: str,
    sender_name: str,
    envelope_id: str,
    local_patient_id: str | None = None,
    new_patient: dict[str, Any] | None = None,
    existing: dict[str, dict[str, Any]] | None = None,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """A transaction Bundle importing ``document`` (see the module docstring). The Patient of the
    document is not imported (the local patient stands for it); Composition is kept.
    ``existing`` maps a document resource ("Task/<id>") to the local resource it updates (an
    exchange Task this node already holds: only its workflow fields change).

    The local patient is ``local_patient_id``, or — for a patient this node does not know yet —
    ``new_patient`` (a :func:`linked_patient`), created by the same transaction under an id
    chosen here (derived from sender and envelope): its entry comes first, a conditional update
    on its pseudonym identifier — created with that id when no Patient has the pseudonym, refused
    by the store (nothing imported) if one with another id has it — and the document's patient
    references, those inside ``contained`` too (the store rewrites no ``fullUrl`` there), are
    ``Patient/<that id>``."""
    if (local_patient_id is None) == (new_patient is None):
        raise ValueError("prepare_import needs exactly one of local_patient_id and new_patient")
    existing = existing or {}
    now = now or dt.datetime.now(dt.UTC)
    resources = resources_of(document)
    entries = document["entry"]
    out_entries: list[dict[str, Any]] = []
    if new_patient is not None:
        patient_id = local_id(sender, "Patient", envelope_id)
        ids = new_patient["identifier"]
        pseudonym = next(str(i["value"]) for i in ids if i["system"] == PSEUDONYM_SYSTEM)
        request = {
            "method": "PUT",
            "url": f"Patient?{identifier_criteria(PSEUDONYM_SYSTEM, pseudonym)}",
        }
        out_entries.append({"resource": {**new_patient, "id": patient_id}, "request": request})
        patient_ref = f"Patient/{patient_id}"
    else:
        patient_ref = f"Patient/{local_patient_id}"
    mapping: dict[str, str] = {}  # fullUrl or Type/id in the document → local Type/id
    for entry, res in zip(entries, resources, strict=True):
        rtype = res["resourceType"]
        here = existing.get(f"{rtype}/{res.get('id')}")
        if rtype == "Patient":
            target = patient_ref
        elif here is not None:
            target = f"{rtype}/{here['id']}"
        else:
            target = (
                f"{rtype}/{local_id(sender, rtype, str(res.get('id') or entry.get('fullUrl')))}"
            )
        if entry.get("fullUrl"):
            mapping[str(entry["fullUrl"])] = target
        if res.get("id"):
            mapping[f"{rtype}/{res['id']}"] = target

    def fix(ref: dict[str, Any]) -> dict[str, Any]:
        if ref["reference"].startswith("#"):
            return ref  # a resource contained in the same one: travels with it
        target = mapping.get(ref["reference"])
        if target is None and ref["reference"].startswith("Patient/"):
            target = patient_ref  # a document is about one patient
        if target is not None:
            return {**ref, "reference": target}
        # Not shared with us: keep what it was, without a link we could not resolve.
        kept = {k: v for k, v in ref.items() if k not in ("reference", "type")}
        kept.setdefault("display", f"{ref['reference'].split('/')[0]} held at {sender_name}")
        return kept

    tag = {"system": EXCHANGE_TAG_SYSTEM, "code": sender, "display": f"Received from {sender_name}"}
    targets: list[dict[str, str]] = []
    for res in resources:
        if res["resourceType"] == "Patient":
            continue
        body = _walk_references(res, fix)  # a fresh copy: the document is left as it was
        rtype = body["resourceType"]
        rid = mapping[f"{rtype}/{res['id']}"].split("/")[1] if res.get("id") else None
        if rid is None:
            continue  # every shared resource carries an id (pack_document's inputs do)
        body["id"] = rid
        meta = {k: v for k, v in body.get("meta", {}).items() if k in ("profile", "security")}
        meta["source"] = f"{org_uri(sender)}#{res.get('id')}"
        meta["tag"] = [tag]
        body["meta"] = meta
        here = existing.get(f"{rtype}/{res.get('id')}")
        if here is not None:
            body = merge_task_update(here, body)
        out_entries.append({"resource": body, "request": idempotent_request(body)})
        targets.append({"reference": f"{rtype}/{rid}"})
    provenance_id = local_id(sender, "Provenance", envelope_id)
    provenance = {
        "resourceType": "Provenance",
        "id": provenance_id,
        "target": targets or [{"reference": patient_ref}],
        "recorded": now.isoformat(),
        "activity": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                    "code": "CREATE",
                }
            ]
        },
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                            "code": "custodian",
                        }
                    ]
                },
                "who": {
                    "identifier": {"system": ORG_SYSTEM, "value": sender},
                    "display": sender_name,
                },
            }
        ],
        "entity": [
            {
                "role": "source",
                "what": {
                    "identifier": {
                        "system": "urn:ietf:rfc:3986",
                        "value": f"urn:uuid:{envelope_id}",
                    }
                },
            }
        ],
        "meta": {"source": org_uri(sender), "tag": [tag]},
    }
    out_entries.append({"resource": provenance, "request": idempotent_request(provenance)})
    return {"resourceType": "Bundle", "type": "transaction", "entry": out_entries}


def merge_task_update(existing: dict[str, Any], incoming: dict[str, Any]) -> dict[str, Any]:
    """The local Task after a status update from the other side: only workflow fields move."""
    merged = copy.deepcopy(existing)
    for field in ("status", "businessStatus", "statusReason", "output", "lastModified"):
        if field in incoming:
            merged[field] = incoming[field]
        elif field in ("statusReason", "output"):
            merged.pop(field, None)
    return merged
