"""Alerts as FHIR (pure): a decision becomes a ``DetectedIssue`` on the patient and a
``Communication`` to the responsible practitioner; the doctor acknowledges (a ``mitigation``:
action, author, time) or dismisses with a reason; an urgent alert not acknowledged in its rule's
time escalates to the care team. CDS Hooks' card feedback (accepted / overridden with a reason)
is the model for what is recorded.

Status: ``preliminary`` = open; ``final`` = acknowledged (mitigated); ``cancelled`` = dismissed.
Search ``DetectedIssue?patient=…&status=preliminary`` for the open ones.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from node.care.apply import iso
from node.care.engine import AlertDecision, subject_of
from node.care.measures import parse_instant

__all__ = [
    "AlertStateError",
    "RULE_SYSTEM",
    "detected_issue",
    "communication",
    "acknowledge",
    "dismiss",
    "escalations",
    "open_alert_keys",
    "rule_of",
    "recipient_of",
    "ALERT_ID_SYSTEM",
]

BASE = "https://ipjms.example.org/fhir"
RULE_SYSTEM = f"{BASE}/CodeSystem/care-rule"
ACTION_SYSTEM = f"{BASE}/CodeSystem/care-alert-action"
ALERT_ID_SYSTEM = f"{BASE}/sid/care-alert"
ACK_BY_EXT = f"{BASE}/StructureDefinition/care-alert-acknowledge-by"
ESCALATED_EXT = f"{BASE}/StructureDefinition/care-alert-escalated"
RECIPIENT_EXT = f"{BASE}/StructureDefinition/care-alert-recipient"
OPEN, ACKNOWLEDGED, DISMISSED = "preliminary", "final", "cancelled"
PRIORITY = {"high": "urgent", "moderate": "routine", "low": "routine"}


class AlertStateError(ValueError):
    """Acknowledging or dismissing an alert that is not open, or without the required text."""


def _ref(reference: str) -> dict[str, str]:
    return {"reference": reference}


def rule_of(issue: Mapping[str, Any]) -> str | None:
    codings = (issue.get("code") or {}).get("coding", [])
    return next((c.get("code") for c in codings if c.get("system") == RULE_SYSTEM), None)


def open_alert_keys(issues: Iterable[Mapping[str, Any]]) -> set[tuple[str, str]]:
    """``(patient, rule id)`` of every open alert — the engine's ``open_alerts``."""
    keys = set()
    for issue in issues:
        rule, patient = rule_of(issue), subject_of(issue)
        if issue.get("status") == OPEN and rule and patient:
            keys.add((patient, rule))
    return keys


def recipient_of(issue: Mapping[str, Any]) -> str | None:
    """The practitioner the alert is addressed to (``care-alert-recipient``)."""
    for e in issue.get("extension", []):
        if e.get("url") == RECIPIENT_EXT:
            return str((e.get("valueReference") or {}).get("reference"))
    return None


def detected_issue(
    decision: AlertDecision, pathway_url: str, recipient: str | None = None
) -> dict[str, Any]:
    rule = decision.rule
    source = f"{rule.source['guideline']} ({rule.source['edition']})"
    detail = f"{decision.summary}. Source: {source}."
    if rule.note:
        detail += f" {rule.note}"
    issue: dict[str, Any] = {
        "resourceType": "DetectedIssue",
        "identifier": [
            {
                "system": ALERT_ID_SYSTEM,
                "value": f"{rule.id}/{decision.patient.split('/')[-1]}/{iso(decision.at)}",
            }
        ],
        "status": OPEN,
        "code": {
            "coding": [{"system": RULE_SYSTEM, "code": rule.id, "display": rule.title}],
            "text": rule.title,
        },
        "severity": rule.severity,
        "patient": _ref(decision.patient),
        "identifiedDateTime": iso(decision.at),
        "evidence": [{"detail": [_ref(r) for r in decision.evidence]}],
        "detail": detail,
        "reference": pathway_url,
    }
    extensions: list[dict[str, Any]] = []
    if recipient:
        extensions.append({"url": RECIPIENT_EXT, "valueReference": _ref(recipient)})
    if rule.acknowledge_within is not None:
        by = decision.at + rule.acknowledge_within
        extensions.append({"url": ACK_BY_EXT, "valueDateTime": iso(by)})
    if extensions:
        issue["extension"] = extensions
    return issue


def communication(
    issue_ref: str, decision: AlertDecision, recipient: str, sent: datetime
) -> dict[str, Any]:
    """The message that addresses the alert to ``recipient`` (a Practitioner or CareTeam)."""
    return {
        "resourceType": "Communication",
        "status": "completed",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/communication-category",
                        "code": "alert",
                    }
                ]
            }
        ],
        "priority": PRIORITY[decision.rule.severity],
        "subject": _ref(decision.patient),
        "about": [_ref(issue_ref)],
        "recipient": [_ref(recipient)],
        "sent": iso(sent),
        "payload": [{"contentString": decision.summary}],
    }


def _close(
    issue: Mapping[str, Any], status: str, code: str, text: str, author: str, clock: datetime
) -> dict[str, Any]:
    if issue.get("status") != OPEN:
        raise AlertStateError(f"alert is {issue.get('status')!r}, not open")
    if not text or not text.strip():
        raise AlertStateError(f"{code} needs a text saying what was done or why")
    body = {k: v for k, v in copy.deepcopy(dict(issue)).items() if k != "meta"}
    body["status"] = status
    body["mitigation"] = [
        *body.get("mitigation", []),
        {
            "action": {
                "coding": [{"system": ACTION_SYSTEM, "code": code}],
                "text": text.strip(),
            },
            "date": iso(clock),
            "author": _ref(author),
        },
    ]
    return body


def acknowledge(
    issue: Mapping[str, Any], action: str, author: str, clock: datetime
) -> dict[str, Any]:
    """The alert's next version, acknowledged: ``mitigation`` = what was done, by whom, when."""
    return _close(issue, ACKNOWLEDGED, "acknowledged", action, author, clock)


def dismiss(issue: Mapping[str, Any], reason: str, author: str, clock: datetime) -> dict[str, Any]:
    """The alert's next version, dismissed with ``reason`` (recorded as a mitigation)."""
    return _close(issue, DISMISSED, "dismissed", reason, author, clock)


def escalations(
    issues: Iterable[Mapping[str, Any]], care_teams: Mapping[str, str], clock: datetime
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(issue's next version marked escalated, Communication to the care team) for every open
    alert past its acknowledge-by time and not yet escalated. ``care_teams``: patient → CareTeam
    reference."""
    out = []
    for issue in issues:
        if issue.get("status") != OPEN:
            continue
        exts = issue.get("extension", [])
        if any(e.get("url") == ESCALATED_EXT for e in exts):
            continue
        by = next((e.get("valueDateTime") for e in exts if e.get("url") == ACK_BY_EXT), None)
        due = parse_instant(by)
        patient = subject_of(issue)
        if due is None or clock <= due or patient is None or patient not in care_teams:
            continue
        body = {k: v for k, v in copy.deepcopy(dict(issue)).items() if k != "meta"}
        body["extension"] = [*exts, {"url": ESCALATED_EXT, "valueDateTime": iso(clock)}]
        message = {
            "resourceType": "Communication",
            "status": "completed",
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/communication-category",
                            "code": "alert",
                        }
                    ]
                }
            ],
            "priority": "stat",
            "subject": _ref(patient),
            "about": [_ref(f"DetectedIssue/{issue.get('id')}")],
            "recipient": [_ref(care_teams[patient])],
            "sent": iso(clock),
            "payload": [
                {"contentString": f"Not acknowledged in time: {issue.get('code', {}).get('text')}"}
            ],
        }
        out.append((body, message))
    return out
