"""Alerts as FHIR: DetectedIssue + Communication, acknowledge (mitigation), dismiss, escalate."""

from __future__ import annotations

import pytest
from fhir.resources.R4B.communication import Communication
from fhir.resources.R4B.detectedissue import DetectedIssue

from node.care.alerts import (
    AlertStateError,
    acknowledge,
    communication,
    detected_issue,
    dismiss,
    escalations,
    open_alert_keys,
)
from node.care.engine import evaluate

from .fixtures import PATIENT, at, feed, plan_for, weight

DR = "Practitioner/dr-wang"


def _hf_alert():
    series = [weight(70.0 + 0.85 * d, at(d)) for d in range(4)]
    [decision] = feed(plan_for("heart-failure"), series)
    return decision


def test_decision_becomes_a_valid_detected_issue_and_communication():
    decision = _hf_alert()
    issue = detected_issue(decision, "https://ipjms.example.org/fhir/PlanDefinition/heart-failure")
    DetectedIssue.model_validate(issue)
    assert issue["status"] == "preliminary" and issue["severity"] == "high"
    assert issue["code"]["coding"][0]["code"] == "hf-weight-gain-3d"
    assert [r["reference"] for r in issue["evidence"][0]["detail"]] == list(decision.evidence)
    assert "ESC" in issue["detail"] and issue["patient"] == {"reference": PATIENT}
    message = communication("DetectedIssue/di1", decision, DR, at(3))
    Communication.model_validate(message)
    assert message["recipient"] == [{"reference": DR}] and message["priority"] == "urgent"
    assert message["about"] == [{"reference": "DetectedIssue/di1"}]


def test_acknowledge_records_mitigation_and_closes_the_alert():
    issue = detected_issue(_hf_alert(), "u") | {"id": "di1"}
    done = acknowledge(issue, "Phoned patient; furosemide increased", DR, at(3, 2))
    DetectedIssue.model_validate(done)
    assert done["status"] == "final"
    [m] = done["mitigation"]
    assert m["action"]["text"] == "Phoned patient; furosemide increased"
    assert m["author"] == {"reference": DR} and m["date"] == "2026-12-04T10:00:00Z"
    assert open_alert_keys([issue]) == {(PATIENT, "hf-weight-gain-3d")}
    assert open_alert_keys([done]) == set()
    with pytest.raises(AlertStateError, match="not open"):
        acknowledge(done, "again", DR, at(4))


def test_dismiss_needs_a_reason():
    issue = detected_issue(_hf_alert(), "u") | {"id": "di1"}
    with pytest.raises(AlertStateError, match="needs a text"):
        dismiss(issue, "  ", DR, at(3))
    gone = dismiss(issue, "scale replaced; reading was wrong", DR, at(3))
    assert gone["status"] == "cancelled"
    assert gone["mitigation"][0]["action"]["coding"][0]["code"] == "dismissed"


def test_once_closed_the_same_rule_can_open_a_new_alert():
    plan = plan_for("heart-failure")
    issue = detected_issue(_hf_alert(), "u") | {"id": "di1"}
    more = [weight(70.0 + 0.85 * d, at(d)) for d in range(5)]
    new, recent = more[-1:], more[:-1]
    blocked = evaluate(plan, new, recent, open_alert_keys([issue]), at(4, 1))
    assert [d for d in blocked if hasattr(d, "rule")] == []
    closed = acknowledge(issue, "seen", DR, at(4))
    again = evaluate(plan, new, recent, open_alert_keys([closed]), at(4, 1))
    assert [d.rule.id for d in again if hasattr(d, "rule")] == ["hf-weight-gain-3d"]


def test_unacknowledged_urgent_alert_escalates_to_the_care_team_once():
    issue = detected_issue(_hf_alert(), "u") | {"id": "di1"}  # acknowledge within 4 h
    teams = {PATIENT: "CareTeam/ct1"}
    assert escalations([issue], teams, at(3, 4)) == []
    [(escalated, message)] = escalations([issue], teams, at(3, 5))
    assert message["recipient"] == [{"reference": "CareTeam/ct1"}] and message["priority"] == "stat"
    Communication.model_validate(message)
    assert escalations([escalated], teams, at(3, 6)) == []
    acked = acknowledge(issue, "seen", DR, at(3, 1))
    assert escalations([acked], teams, at(3, 6)) == []
