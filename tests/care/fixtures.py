"""Builders for care tests: FHIR resources for one patient at a given time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import cache
from itertools import count
from typing import Any

from node.care.definitions import CareDefinitions, load_definitions

UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
LOCAL_MEASURE = "https://ipjms.example.org/fhir/CodeSystem/care-measure"
T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
PATIENT = "Patient/p1"
_ids = count(1)


@cache
def definitions() -> CareDefinitions:
    return load_definitions()


def at(days: float = 0, hours: float = 0) -> datetime:
    return T0 + timedelta(days=days, hours=hours)


def obs(
    code: str,
    value: float | int,
    unit: str | None,
    when: datetime,
    *,
    system: str = LOINC,
    patient: str = PATIENT,
    unit_system: str = UCUM,
    rid: str | None = None,
) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Observation",
        "id": rid or f"o{next(_ids)}",
        "status": "final",
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": patient},
        "effectiveDateTime": when.isoformat(),
    }
    if unit is None:
        res["valueInteger"] = int(value)
    else:
        res["valueQuantity"] = {"value": value, "unit": unit, "system": unit_system, "code": unit}
    return res


def bp(sys_: float, dia: float, when: datetime, *, patient: str = PATIENT, unit: str = "mm[Hg]"):
    return {
        "resourceType": "Observation",
        "id": f"bp{next(_ids)}",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
        "subject": {"reference": patient},
        "effectiveDateTime": when.isoformat(),
        "component": [
            {
                "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                "valueQuantity": {"value": sys_, "unit": unit, "system": UCUM, "code": unit},
            },
            {
                "code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
                "valueQuantity": {"value": dia, "unit": unit, "system": UCUM, "code": unit},
            },
        ],
    }


def weight(kg: float, when: datetime, **kw: Any) -> dict[str, Any]:
    return obs("29463-7", kg, "kg", when, **kw)


def cat(score: int, when: datetime, **kw: Any) -> dict[str, Any]:
    return obs("copd-cat-total", score, None, when, system=LOCAL_MEASURE, **kw)


def patient(pid: str = "p1") -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid}


def medication_request(mid: str = "m1", text: str = "furosemide 40 mg") -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": mid,
        "status": "active",
        "intent": "order",
        "subject": {"reference": PATIENT},
        "medicationCodeableConcept": {"text": text},
        "dosageInstruction": [
            {
                "text": "one every morning",
                "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
            }
        ],
    }


def plan_for(key: str, **kw: Any):
    from node.care.engine import PlanContext

    pathway = definitions().by_key(key)
    assert pathway is not None
    return PlanContext(PATIENT, pathway, **kw)


def feed(plan, resources, *, start_open=()):
    """Post ``resources`` one at a time (each evaluated at its own time plus a minute), keeping
    recent data, open alerts and the control status as the worker would. Returns every alert
    decision in order."""
    import dataclasses

    from node.care.engine import AlertDecision, ControlChange, evaluate
    from node.care.measures import parse_instant

    recent: list[dict[str, Any]] = []
    open_alerts = set(start_open)
    alerts: list[AlertDecision] = []
    for res in resources:
        when = parse_instant(res.get("effectiveDateTime") or res.get("occurrenceDateTime"))
        assert when is not None
        decisions = evaluate(plan, [res], recent, open_alerts, when + timedelta(minutes=1))
        recent.append(res)
        for d in decisions:
            if isinstance(d, AlertDecision):
                alerts.append(d)
                open_alerts.add(d.key)
            elif isinstance(d, ControlChange):
                plan = dataclasses.replace(plan, control_status=d.status)
    return alerts
