"""Dynamic plans: when a patient's control status changes, a new CarePlan version (pure).

The pathway's actions carry applicability conditions on ``%controlStatus``, so re-selecting them
under the new status says what changes (e.g. home BP twice daily instead of twice weekly; an
early follow-up within 2 weeks instead of the routine one in 3 months). :func:`revise_plan`
returns the CarePlan's next version — same id, the new activities, the control status and the
reason in an extension and a note — plus the follow-up requests to create and those to cancel.
A visit already due earlier than its replacement is kept: a plan never moves a visit later
because the patient improved.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from node.care.apply import (
    ACTION_EXT,
    CONTROL_EXT,
    REASON_EXT,
    iso,
    process_action,
    select_actions,
)
from node.care.measures import parse_instant

if TYPE_CHECKING:
    from node.care.definitions import Pathway

__all__ = ["PlanRevision", "revise_plan", "action_of", "control_of"]


def action_of(activity: Mapping[str, Any]) -> str | None:
    return next(
        (e.get("valueId") for e in activity.get("extension", []) if e.get("url") == ACTION_EXT),
        None,
    )


def control_of(careplan: Mapping[str, Any]) -> str:
    return next(
        (e["valueCode"] for e in careplan.get("extension", []) if e.get("url") == CONTROL_EXT),
        "unknown",
    )


@dataclass(frozen=True)
class PlanRevision:
    careplan: dict[str, Any]  # the next version (keeps the id)
    created: tuple[dict[str, Any], ...]  # new ServiceRequests/Tasks (with _fullUrl)
    cancelled: tuple[dict[str, Any], ...]  # ServiceRequests revoked / Tasks cancelled (with id)
    reason: str
    base_version: str | None = None  # the CarePlan version this revision was made from

    def transaction(self) -> dict[str, Any]:
        """Every PUT carries If-Match on the version it was made from: a change made meanwhile
        (a doctor's edit) fails the whole transaction (412) instead of being overwritten."""

        def put(res: Mapping[str, Any], version: Any) -> dict[str, Any]:
            body = {k: v for k, v in res.items() if k != "meta"}
            url = f"{res['resourceType']}/{res['id']}"
            request = {"method": "PUT", "url": url}
            if version is not None:
                request["ifMatch"] = f'W/"{version}"'
            return {"fullUrl": url, "resource": body, "request": request}

        entries = [put(self.careplan, self.base_version)]
        for res in self.created:
            body = {k: v for k, v in res.items() if k != "_fullUrl"}
            entries.append(
                {
                    "fullUrl": res["_fullUrl"],
                    "resource": body,
                    "request": {"method": "POST", "url": res["resourceType"]},
                }
            )
        entries += [put(r, (r.get("meta") or {}).get("versionId")) for r in self.cancelled]
        return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _due(task: Mapping[str, Any]) -> datetime | None:
    return parse_instant(((task.get("restriction") or {}).get("period") or {}).get("end"))


def revise_plan(
    pathway: Pathway,
    patient: Mapping[str, Any],
    careplan: Mapping[str, Any],
    follow_ups: Sequence[Mapping[str, Any]],
    status: str,
    reason: str,
    practitioner: str,
    medications: Sequence[Mapping[str, Any]],
    clock: datetime,
) -> PlanRevision | None:
    """The next CarePlan version for ``status`` (None if the status is the plan's already)."""
    previous = control_of(careplan)
    if status == previous:
        return None
    patient_ref = f"Patient/{patient['id']}"
    plan_ref = f"CarePlan/{careplan['id']}"
    old = {action_of(a): a for a in careplan.get("activity", [])}
    selected = select_actions(pathway, patient, status, medications)
    chosen = {a["id"] for a in selected}
    activities: list[dict[str, Any]] = []
    created: list[dict[str, Any]] = []
    changes: list[str] = []
    new_due: dict[str, datetime] = {}
    for action in selected:
        if action["id"] in old and "reference" in old[action["id"]]:
            activities.append(copy.deepcopy(dict(old[action["id"]])))  # visit already planned
            continue
        result = process_action(
            action, pathway, patient_ref, practitioner, medications, clock, plan_ref
        )
        activities += result.activities
        created += result.requests
        for req in result.requests:
            if req["resourceType"] == "Task":
                new_due[action["id"]] = parse_instant(req["restriction"]["period"]["end"]) or clock
        if action["id"] not in old:
            changes.append(f"{action.get('title', action['id'])} added")
    earliest_new = min(new_due.values(), default=None)
    cancelled: list[dict[str, Any]] = []
    for aid, activity in old.items():
        if aid in chosen:
            continue
        ref = (activity.get("reference") or {}).get("reference")
        if ref is None:
            changes.append(f"{aid} stopped")
            continue
        tasks = [
            t
            for t in follow_ups
            if t.get("resourceType") == "Task" and (t.get("focus") or {}).get("reference") == ref
        ]
        open_due = [d for t in tasks if t.get("status") == "requested" and (d := _due(t))]
        if open_due and (earliest_new is None or min(open_due) < earliest_new):
            activities.append(copy.deepcopy(dict(activity)))  # keep the earlier visit
            changes.append(f"{aid} kept (due {min(open_due).date().isoformat()}, earlier)")
            continue
        for res in follow_ups:
            if (
                f"{res.get('resourceType')}/{res.get('id')}" == ref
                and res.get("status") == "active"
            ):
                cancelled.append({**copy.deepcopy(dict(res)), "status": "revoked"})
        for t in tasks:
            if t.get("status") == "requested":
                cancelled.append({**copy.deepcopy(dict(t)), "status": "cancelled"})
        changes.append(f"{aid} replaced")
    for aid, due in new_due.items():
        changes.append(f"{aid} due {due.date().isoformat()}")
    why = f"control status {previous} → {status}: {reason}. Plan: {'; '.join(changes)}"
    body = {k: v for k, v in copy.deepcopy(dict(careplan)).items() if k != "meta"}
    body["extension"] = [
        e for e in body.get("extension", []) if e.get("url") not in (CONTROL_EXT, REASON_EXT)
    ] + [
        {"url": CONTROL_EXT, "valueCode": status},
        {"url": REASON_EXT, "valueString": why},
    ]
    body["activity"] = activities
    body["note"] = [*body.get("note", []), {"time": iso(clock), "text": why}]
    version = (careplan.get("meta") or {}).get("versionId")
    return PlanRevision(body, tuple(created), tuple(cancelled), why, version)
