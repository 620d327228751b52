"""HL7 Clinical Order Workflows for exchange Tasks (pure): which status changes are allowed, and
the Task/ServiceRequest pair a doctor's referral or consultation request becomes."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from node.exchange.documents import ORG_SYSTEM, TASK_ID_SYSTEM

__all__ = [
    "TRANSITIONS",
    "BREAK_GLASS_LABEL",
    "check_transition",
    "new_request",
    "task_uid",
    "task_parties",
    "is_break_glass",
    "query_parameter",
    "pull_note",
    "BREAK_GLASS_PREFIX",
]

# The purpose-of-use security label of a break-glass (emergency) request (FHIR meta.security).
BREAK_GLASS_LABEL = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
    "code": "ETREAT",
    "display": "Emergency Treatment",
}

TRANSITIONS: dict[str, frozenset[str]] = {
    "requested": frozenset({"accepted", "rejected", "cancelled"}),
    "accepted": frozenset({"in-progress", "cancelled", "completed"}),
    "in-progress": frozenset({"completed", "on-hold", "failed"}),
    "on-hold": frozenset({"in-progress", "cancelled"}),
}


def check_transition(current: str, new: str) -> None:
    if new not in TRANSITIONS.get(current, frozenset()):
        raise ValueError(f"a Task cannot move from {current!r} to {new!r}")


def _org(org_id: str, name: str = "") -> dict[str, Any]:
    ref: dict[str, Any] = {"identifier": {"system": ORG_SYSTEM, "value": org_id}}
    if name:
        ref["display"] = name
    return ref


def new_request(
    *,
    kind: str,
    patient_id: str,
    requester: str,
    requester_name: str,
    performer: str,
    reason: str,
    question: str = "",
    now: dt.datetime | None = None,
    break_glass_reason: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ServiceRequest and Task (status ``requested``) of a referral or consultation. A
    break-glass request is labelled ETREAT, urgent (``stat``), and notes the stated reason."""
    now = now or dt.datetime.now(dt.UTC)
    uid = str(uuid.uuid4())
    sr_id = f"sr-{uid}"
    category = (
        {"system": "http://snomed.info/sct", "code": "3457005", "display": "Patient referral"}
        if kind == "referral"
        else {"system": "http://snomed.info/sct", "code": "11429006", "display": "Consultation"}
    )
    service_request = {
        "resourceType": "ServiceRequest",
        "id": sr_id,
        "identifier": [{"system": TASK_ID_SYSTEM, "value": uid}],
        "status": "active",
        "intent": "order",
        "category": [{"coding": [category]}],
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": now.isoformat(),
        "requester": _org(requester, requester_name),
        "performer": [_org(performer)],
        "reasonCode": [{"text": reason}],
    }
    if question:
        service_request["note"] = [{"text": question}]
    task = {
        "resourceType": "Task",
        "id": f"task-{uid}",
        "identifier": [{"system": TASK_ID_SYSTEM, "value": uid}],
        "status": "requested",
        "businessStatus": {"text": "sent"},
        "intent": "order",
        "code": {"coding": [category]},
        "focus": {"reference": f"ServiceRequest/{sr_id}"},
        "for": {"reference": f"Patient/{patient_id}"},
        "authoredOn": now.isoformat(),
        "lastModified": now.isoformat(),
        "requester": _org(requester, requester_name),
        "owner": _org(performer),
        "description": question or reason,
    }
    if break_glass_reason is not None:
        for resource in (service_request, task):
            resource["meta"] = {"security": [dict(BREAK_GLASS_LABEL)]}
            resource["priority"] = "stat"
            resource["note"] = [*resource.get("note", []), {"text": break_glass_reason}]
    return service_request, task


def is_break_glass(resource: dict[str, Any]) -> bool:
    """Whether a request or Task carries the break-glass (ETREAT) label."""
    return any(
        s.get("system") == BREAK_GLASS_LABEL["system"] and s.get("code") == "ETREAT"
        for s in resource.get("meta", {}).get("security", [])
    )


def task_uid(task: dict[str, Any]) -> str | None:
    for ident in task.get("identifier", []):
        if ident.get("system") == TASK_ID_SYSTEM:
            return str(ident.get("value"))
    return None


def task_parties(task: dict[str, Any]) -> tuple[str, str]:
    """(requester org, owner org) of an exchange Task."""
    requester = task.get("requester", {}).get("identifier", {}).get("value", "")
    owner = task.get("owner", {}).get("identifier", {}).get("value", "")
    return str(requester), str(owner)


def query_parameter(query: dict[str, Any], name: str) -> str:
    """A record query's single value of ``name`` ("" when absent)."""
    for p in query.get("parameter", []):
        if isinstance(p, dict) and p.get("name") == name:
            for key in ("valueId", "valueString", "valueCode"):
                if isinstance(p.get(key), str):
                    return str(p[key])
    return ""


BREAK_GLASS_PREFIX = "break-glass"  # an exchange inbox row's detail: arrived under break-glass


def pull_note(query: dict[str, Any]) -> str:
    """How a holder records a break-glass record query it received (its inbox row's detail)."""
    return (
        f"break-glass record query by {query_parameter(query, 'break-glass-user') or '?'}: "
        f"{query_parameter(query, 'break-glass-reason')}"
    )
