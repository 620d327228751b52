"""A patient's journey: one timeline across institutions (each item marked with the institution
it came from — the import's ``meta.source``, else this node), trend charts with the goals' bands
and the plan's changes, and the care plans. Pure functions over the patient's resources;
``load_journey`` does the reads (``$everything`` under the caller's compartment)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from node.care.measures import MeasureCatalog, parse_instant, readings
from node.portal.panel import control_of, pathway_key, person_name
from node.store import FhirStore

__all__ = [
    "TimelineItem",
    "Trend",
    "Journey",
    "timeline",
    "trends",
    "load_journey",
    "TIMELINE_TYPES",
]

ORG_PREFIX = "urn:ipjms:org:"
# What the timeline shows, and the element holding each kind's date.
TIMELINE_TYPES: dict[str, tuple[str, ...]] = {
    "Encounter": ("period.start",),
    "Condition": ("onsetDateTime", "recordedDate"),
    "MedicationRequest": ("authoredOn",),
    "Observation": ("effectiveDateTime", "effectivePeriod.start", "issued"),
    "DiagnosticReport": ("effectiveDateTime", "issued"),
    "Procedure": ("performedDateTime", "performedPeriod.start"),
    "Immunization": ("occurrenceDateTime",),
    "ServiceRequest": ("authoredOn",),
    "Task": ("authoredOn", "lastModified"),
    "Communication": ("sent",),
    "Appointment": ("start",),
    "DetectedIssue": ("identifiedDateTime",),
    "CarePlan": ("created", "period.start"),
    "RiskAssessment": ("occurrenceDateTime",),
}


# Goals on these measures are changes, not levels (heart failure: no gain of more than 2 kg in
# 3 days — HFA/ESC self-care 2021), so their charts have no band.
CHANGE_GOALS = {("http://loinc.org", "29463-7")}


@dataclass(frozen=True)
class TimelineItem:
    when: str
    kind: str  # resource type
    summary: str
    source: str | None  # the other institution's org id, None = this node
    status: str


@dataclass
class Trend:
    measure: str
    title: str
    unit: str
    times: list[float] = field(default_factory=list)  # epoch seconds
    values: list[float] = field(default_factory=list)
    band: tuple[float, float] | None = None  # the goal's range, in the measure's unit

    def chart(self, marks: list[float]) -> dict[str, Any]:
        return {
            "t": self.times,
            "series": [{"label": f"{self.title} ({self.unit})", "values": self.values}],
            "band": list(self.band) if self.band else None,
            "marks": [m for m in marks if self.times and m >= self.times[0]],
        }


@dataclass
class Journey:
    patient: dict[str, Any]
    name: str
    items: list[TimelineItem]
    total_items: int
    trends: list[Trend]
    plans: list[dict[str, Any]]
    plan_marks: list[float]
    open_alerts: list[dict[str, Any]]
    sources: list[str]


def _path(resource: Mapping[str, Any], dotted: str) -> Any:
    value: Any = resource
    for part in dotted.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _concept_text(concept: Any) -> str:
    if not isinstance(concept, Mapping):
        return ""
    if concept.get("text"):
        return str(concept["text"])
    for coding in concept.get("coding", []):
        if coding.get("display"):
            return str(coding["display"])
    for coding in concept.get("coding", []):
        if coding.get("code"):
            return str(coding["code"])
    return ""


def _value(resource: Mapping[str, Any]) -> str:
    q = resource.get("valueQuantity")
    if isinstance(q, Mapping) and "value" in q:
        return f"{q['value']:g} {q.get('unit') or q.get('code') or ''}".strip()
    parts = []
    for comp in resource.get("component", []):
        cq = comp.get("valueQuantity")
        if isinstance(cq, Mapping) and "value" in cq:
            parts.append(f"{cq['value']:g}")
    if parts:
        return "/".join(parts)
    for name in ("valueString", "valueInteger", "valueBoolean"):
        if name in resource:
            return str(resource[name])
    return _concept_text(resource.get("valueCodeableConcept"))


def summary(resource: Mapping[str, Any], titles: Mapping[tuple[str, str], str] = {}) -> str:  # noqa: B006
    """One line saying what the resource is (``titles``: measure titles by code)."""
    rtype = resource.get("resourceType")
    if rtype == "Observation":
        code = resource.get("code") or {}
        text = next(
            (
                titles[(c.get("system"), c.get("code"))]
                for c in code.get("coding", [])
                if (c.get("system"), c.get("code")) in titles
            ),
            "",
        ) or _concept_text(code)
        value = _value(resource)
        return f"{text}: {value}" if value else text
    if rtype == "MedicationRequest":
        return _concept_text(resource.get("medicationCodeableConcept")) or "medication"
    if rtype == "Encounter":
        kinds = ", ".join(_concept_text(t) for t in resource.get("type", []) if t)
        return kinds or str((resource.get("class") or {}).get("code", "encounter"))
    if rtype == "Communication":
        texts = [p.get("contentString", "") for p in resource.get("payload", [])]
        return "; ".join(t for t in texts if t)[:200] or "message"
    if rtype == "Task":
        return str(resource.get("description") or _concept_text(resource.get("code")) or "task")
    if rtype == "CarePlan":
        return str(resource.get("title") or "care plan")
    if rtype == "DetectedIssue":
        return _concept_text(resource.get("code"))
    if rtype == "Appointment":
        return str(resource.get("description") or "appointment")
    return _concept_text(resource.get("code")) or str(rtype)


def source_org(resource: Mapping[str, Any]) -> str | None:
    source = str((resource.get("meta") or {}).get("source", ""))
    if source.startswith(ORG_PREFIX):
        return source[len(ORG_PREFIX) :].split("#")[0]
    return None


def when_of(resource: Mapping[str, Any]) -> str:
    for path in TIMELINE_TYPES.get(str(resource.get("resourceType")), ()):
        value = _path(resource, path)
        if isinstance(value, str) and value:
            return value
    return str((resource.get("meta") or {}).get("lastUpdated", ""))


def timeline(
    resources: Iterable[Mapping[str, Any]],
    titles: Mapping[tuple[str, str], str] = {},  # noqa: B006
) -> list[TimelineItem]:
    """Every clinical item, newest first, marked with its institution."""
    items = [
        TimelineItem(
            when_of(r),
            str(r["resourceType"]),
            summary(r, titles),
            source_org(r),
            str(r.get("status") or _concept_text(r.get("clinicalStatus")) or ""),
        )
        for r in resources
        if r.get("resourceType") in TIMELINE_TYPES
    ]
    return sorted(items, key=lambda i: i.when, reverse=True)


def _goal_band(goal: Mapping[str, Any], measure_codes: set[tuple[str, str]]) -> Any:
    for target in goal.get("target", []):
        codes = {
            (c.get("system"), c.get("code"))
            for c in (target.get("measure") or {}).get("coding", [])
        }
        if not codes & measure_codes:
            continue
        rng = target.get("detailRange")
        if isinstance(rng, Mapping):
            low = (rng.get("low") or {}).get("value")
            high = (rng.get("high") or {}).get("value")
            return (float(low) if low is not None else 0.0, float(high)) if high else None
        if codes & CHANGE_GOALS:
            return None
        qty = target.get("detailQuantity")
        if isinstance(qty, Mapping) and qty.get("comparator") in ("<", "<="):
            return (0.0, float(qty["value"]))  # a level to stay under (e.g. HbA1c < 7 %)
    return None


def trends(
    resources: Iterable[Mapping[str, Any]],
    goals: Iterable[Mapping[str, Any]],
    catalog: MeasureCatalog,
) -> list[Trend]:
    """One trend per measure with readings, oldest first, with its goal's band."""
    by_measure: dict[str, Trend] = {}
    for reading in readings(resources, catalog):
        measure = catalog.measures[reading.measure]
        trend = by_measure.get(reading.measure)
        if trend is None:
            trend = by_measure[reading.measure] = Trend(
                reading.measure, measure.title, measure.unit
            )
        trend.times.append(reading.time.timestamp())
        trend.values.append(reading.value)
    goal_list = list(goals)
    for trend in by_measure.values():
        codes = {tuple(c) for c in catalog.measures[trend.measure].codes}
        for goal in goal_list:
            band = _goal_band(goal, codes)  # type: ignore[arg-type]
            if band is not None:
                trend.band = band
                break
    return sorted(by_measure.values(), key=lambda t: t.title)


def load_journey(
    store: FhirStore,
    patient_id: str,
    catalog: MeasureCatalog,
    *,
    compartment: str | None = None,
    limit: int = 200,
) -> Journey:
    result = store.everything(patient_id, compartment_patient=compartment)
    patient: dict[str, Any] = {}
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in result.resources:
        if r.get("resourceType") == "Patient" and r.get("id") == patient_id:
            patient = r
        grouped[str(r.get("resourceType"))].append(r)
    titles = {code: m.title for m in catalog.measures.values() for code in m.codes}
    items = timeline(result.resources, titles)
    plans = [p for p in grouped["CarePlan"] if p.get("status") == "active"]
    marks: list[float] = []
    for plan in plans:
        for version in store.history("CarePlan", str(plan["id"]))[
            :-1
        ]:  # every revision after the first
            when = parse_instant((version.get("meta") or {}).get("lastUpdated"))
            if when is not None:
                marks.append(when.timestamp())
    goals = [g for g in grouped["Goal"] if g.get("lifecycleStatus") == "active"]
    open_alerts = [i for i in grouped["DetectedIssue"] if i.get("status") == "preliminary"]
    sources = sorted({i.source for i in items if i.source})
    return Journey(
        patient=patient,
        name=person_name(patient),
        items=items[:limit],
        total_items=len(items),
        trends=trends(grouped["Observation"], goals, catalog),
        plans=[
            {
                "plan": p,
                "pathway": pathway_key(p),
                "control": control_of(p),
                "goals": [
                    g
                    for g in goals
                    if f"Goal/{g.get('id')}" in {a.get("reference") for a in p.get("goal", [])}
                ],
            }
            for p in plans
        ],
        plan_marks=sorted(marks),
        open_alerts=open_alerts,
        sources=sources,
    )
