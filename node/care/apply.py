"""``PlanDefinition/$apply`` for a pathway, as small pure steps (after HAPI's ProcessAction):

1. :func:`select_actions` — the actions whose applicability conditions (FHIRPath, with
   ``%controlStatus`` and ``%activeMedications``) hold for this patient now;
2. :func:`goals` — the plan's ``Goal`` s with due dates;
3. :func:`process_action` — one action's ``ActivityDefinition`` → ``CarePlan.activity`` entries
   (home measurements and advice as ``detail`` with their ``scheduledTiming``; one medication
   reminder per active ``MedicationRequest``) and, for visits and tests, a ``ServiceRequest`` +
   ``Task`` with a due date;
4. :func:`care_team` — the ``CareTeam`` naming the responsible practitioner;
5. :func:`apply_pathway` — all of it into an :class:`AppliedPlan` (``CarePlan`` with
   ``instantiatesCanonical`` → the PlanDefinition), and :meth:`AppliedPlan.transaction` as one
   FHIR transaction Bundle with ``urn:uuid`` ids (deterministic: same inputs, same Bundle).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from node.care.timing import add_period, timing_period

if TYPE_CHECKING:
    from node.care.definitions import Pathway

__all__ = [
    "AppliedPlan",
    "ACTION_EXT",
    "CONTROL_EXT",
    "REASON_EXT",
    "PLAN_ID_SYSTEM",
    "select_actions",
    "goals",
    "process_action",
    "care_team",
    "apply_pathway",
    "iso",
    "urn",
]

BASE = "https://ipjms.example.org/fhir"
ACTION_EXT = f"{BASE}/StructureDefinition/care-plan-action"
CONTROL_EXT = f"{BASE}/StructureDefinition/care-control-status"
REASON_EXT = f"{BASE}/StructureDefinition/care-plan-revision-reason"
PLAN_ID_SYSTEM = f"{BASE}/sid/care-plan"
MEDICATION_REMINDER = "medication-reminder"
_NS = uuid.UUID("5b0c4f7e-6b1e-4c55-9a51-1c1e0f6b7a10")


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def urn(*parts: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_NS, '|'.join(parts))}"


def _ref(reference: str) -> dict[str, str]:
    return {"reference": reference}


def select_actions(
    pathway: Pathway,
    patient: Mapping[str, Any],
    control_status: str,
    medications: Sequence[Mapping[str, Any]],
) -> list[Mapping[str, Any]]:
    """The PlanDefinition's actions that apply (every applicability condition true)."""
    variables = {"controlStatus": control_status, "activeMedications": list(medications)}
    out = []
    for action in pathway.plan_definition.get("action", []):
        cond = pathway.conditions.get(action["id"])
        if cond is None or cond.is_true(patient, variables):
            out.append(action)
    return out


def goals(pathway: Pathway, patient_ref: str, practitioner: str, clock: datetime) -> list[dict]:
    out = []
    for g in pathway.plan_definition.get("goal", []):
        targets = []
        for t in g.get("target", []):
            target: dict[str, Any] = {"measure": t["measure"]}
            for name in ("detailQuantity", "detailRange"):
                if name in t:
                    target[name] = t[name]
            if "due" in t:
                due = add_period(clock, t["due"]["value"], t["due"]["code"])
                target["dueDate"] = due.date().isoformat()
            targets.append(target)
        cites = "; ".join(d["citation"] for d in g.get("documentation", []) if "citation" in d)
        out.append(
            {
                "resourceType": "Goal",
                "lifecycleStatus": "active",
                "priority": g.get("priority"),
                "description": g["description"],
                "subject": _ref(patient_ref),
                "startDate": clock.date().isoformat(),
                "expressedBy": _ref(practitioner),
                "target": targets,
                "note": [{"text": f"Target from: {cites}"}],
                "id": g["id"],  # the PlanDefinition's goal id; replaced by a urn in the Bundle
            }
        )
    return [{k: v for k, v in g.items() if v is not None} for g in out]


@dataclass
class ActionResult:
    activities: list[dict[str, Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)  # ServiceRequest/Task bodies


def _reminders(action_id: str, ad: Mapping[str, Any], meds: Sequence[Mapping[str, Any]]) -> list:
    out = []
    for mr in meds:
        detail: dict[str, Any] = {
            "kind": "MedicationRequest",
            "instantiatesCanonical": [f"{ad['url']}|{ad['version']}"],
            "code": ad["code"],
            "status": "in-progress",
            "description": "Reminder: "
            + "; ".join(d.get("text", "") for d in mr.get("dosageInstruction", []) if d.get("text"))
            or "Reminder: take as prescribed",
        }
        for name in ("medicationCodeableConcept", "medicationReference"):
            if name in mr:
                product = name.replace("medication", "product")
                detail[product] = mr[name]
        timing = next((d["timing"] for d in mr.get("dosageInstruction", []) if "timing" in d), None)
        if timing:
            detail["scheduledTiming"] = timing
        out.append({"extension": [{"url": ACTION_EXT, "valueId": action_id}], "detail": detail})
    return out


def process_action(
    action: Mapping[str, Any],
    pathway: Pathway,
    patient_ref: str,
    practitioner: str,
    medications: Sequence[Mapping[str, Any]],
    clock: datetime,
    careplan_ref: str,
) -> ActionResult:
    """One applicable action → CarePlan activities and, for a practitioner's activity, a
    ServiceRequest and its Task due one period of the ActivityDefinition's timing from now."""
    ad = pathway.activity_definitions[action["definitionCanonical"]]
    canonical = f"{ad['url']}|{ad['version']}"
    ext = [{"url": ACTION_EXT, "valueId": action["id"]}]
    codes = {c.get("code") for c in ad.get("code", {}).get("coding", [])}
    if MEDICATION_REMINDER in codes:
        return ActionResult(activities=_reminders(action["id"], ad, medications))
    participant = (ad.get("participant") or [{}])[0].get("type")
    if participant == "patient":
        detail: dict[str, Any] = {
            "kind": ad["kind"],
            "instantiatesCanonical": [canonical],
            "code": ad["code"],
            "status": "in-progress",
            "performer": [_ref(patient_ref)],
            "description": ad.get("description", ad.get("title", "")),
        }
        if "timingTiming" in ad:
            detail["scheduledTiming"] = ad["timingTiming"]
        return ActionResult(activities=[{"extension": ext, "detail": detail}])
    period, unit = timing_period(ad["timingTiming"])
    due = add_period(clock, period, unit)
    sr_ref = urn(patient_ref, pathway.url, iso(clock), action["id"], "ServiceRequest")
    task_ref = urn(patient_ref, pathway.url, iso(clock), action["id"], "Task")
    sr = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "plan",
        "instantiatesCanonical": [canonical],
        "basedOn": [_ref(careplan_ref)],
        "code": ad["code"],
        "subject": _ref(patient_ref),
        "occurrenceDateTime": iso(due),
        "authoredOn": iso(clock),
        "requester": _ref(practitioner),
        "performer": [_ref(practitioner)],
        "note": [{"text": ad.get("description", "")}],
        "_fullUrl": sr_ref,
    }
    task = {
        "resourceType": "Task",
        "status": "requested",
        "intent": "plan",
        "code": {
            "coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]
        },
        "description": action.get("title", ad.get("title", "")),
        "focus": _ref(sr_ref),
        "for": _ref(patient_ref),
        "basedOn": [_ref(careplan_ref)],
        "authoredOn": iso(clock),
        "owner": _ref(practitioner),
        "restriction": {"period": {"end": iso(due)}},
        "_fullUrl": task_ref,
    }
    return ActionResult(
        activities=[{"extension": ext, "reference": _ref(sr_ref)}], requests=[sr, task]
    )


def care_team(pathway: Pathway, patient_ref: str, practitioner: str) -> dict[str, Any]:
    return {
        "resourceType": "CareTeam",
        "status": "active",
        "name": f"{pathway.title}: care team",
        "subject": _ref(patient_ref),
        "participant": [
            {
                "role": [{"text": "responsible practitioner"}],
                "member": _ref(practitioner),
            }
        ],
    }


@dataclass(frozen=True)
class AppliedPlan:
    careplan: dict[str, Any]
    goals: tuple[dict[str, Any], ...]
    care_team: dict[str, Any]
    requests: tuple[dict[str, Any], ...]  # ServiceRequests and Tasks
    full_urls: Mapping[str, str]  # "CarePlan" / "CareTeam" / "Goal/<id>" → urn

    def resources(self) -> list[dict[str, Any]]:
        return [self.careplan, *self.goals, self.care_team, *self.requests]

    def transaction(self) -> dict[str, Any]:
        """One FHIR transaction Bundle creating everything (references as urn:uuid)."""
        entries = []
        for res in self.resources():
            body = {k: v for k, v in res.items() if k != "_fullUrl" and k != "id"}
            entries.append(
                {
                    "fullUrl": res["_fullUrl"],
                    "resource": body,
                    "request": {"method": "POST", "url": res["resourceType"]},
                }
            )
        return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def apply_pathway(
    pathway: Pathway,
    patient: Mapping[str, Any],
    practitioner: str,
    medications: Sequence[Mapping[str, Any]],
    clock: datetime,
    control_status: str = "unknown",
    condition_ref: str | None = None,
) -> AppliedPlan:
    """``$apply``: the patient's CarePlan, Goals, CareTeam and follow-up requests."""
    patient_ref = f"Patient/{patient['id']}"
    stamp = (patient_ref, pathway.url, iso(clock))
    plan_ref, team_ref = urn(*stamp, "CarePlan"), urn(*stamp, "CareTeam")
    goal_list = goals(pathway, patient_ref, practitioner, clock)
    urls = {"CarePlan": plan_ref, "CareTeam": team_ref}
    for g in goal_list:
        urls[f"Goal/{g['id']}"] = g["_fullUrl"] = urn(*stamp, "Goal", g["id"])
        if condition_ref:
            g["addresses"] = [_ref(condition_ref)]
    activities: list[dict[str, Any]] = []
    requests: list[dict[str, Any]] = []
    for action in select_actions(pathway, patient, control_status, medications):
        result = process_action(
            action, pathway, patient_ref, practitioner, medications, clock, plan_ref
        )
        activities += result.activities
        requests += result.requests
    careplan: dict[str, Any] = {
        "resourceType": "CarePlan",
        "extension": [{"url": CONTROL_EXT, "valueCode": control_status}],
        "identifier": [{"system": PLAN_ID_SYSTEM, "value": f"{pathway.key}/{patient['id']}"}],
        "instantiatesCanonical": [pathway.canonical],
        "status": "active",
        "intent": "plan",
        "title": pathway.title,
        "subject": _ref(patient_ref),
        "period": {"start": iso(clock)},
        "created": iso(clock),
        "author": _ref(practitioner),
        "careTeam": [_ref(team_ref)],
        "goal": [_ref(g["_fullUrl"]) for g in goal_list],
        "activity": activities,
        "_fullUrl": plan_ref,
    }
    if medications:
        careplan["supportingInfo"] = [_ref(f"MedicationRequest/{m['id']}") for m in medications]
    if condition_ref:
        careplan["addresses"] = [_ref(condition_ref)]
    return AppliedPlan(
        careplan=careplan,
        goals=tuple(goal_list),
        care_team={**care_team(pathway, patient_ref, practitioner), "_fullUrl": team_ref},
        requests=tuple(requests),
        full_urls=urls,
    )
