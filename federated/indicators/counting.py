"""Pure counting: one patient's FHIR resources → the units each indicator counts, and a node's
exact tally per stratum cell. No I/O, no clock (the period and the as-of time are arguments).

A *unit* is what an indicator counts (a discharge, a patient, a follow-up Task, an alert, a
patient-pathway pair): it adds 1 to the denominator and ``numerator`` (0/1 for a rate, a capped
value for a mean) to the numerator. At most ``contribution_cap`` units per patient and
indicator are counted — the earliest by time — so that one patient changes any cell by a bounded
amount (the sensitivity the noise is calibrated to). Codes are the feature spec's
(:mod:`federated.feature_spec`); the care resources are read as :mod:`node.care` writes them
(duplicated here as data: federated may not import node).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from federated.feature_spec import (  # one reading of a Condition's code
    LOINC,
    _codings,
    _condition_key,
    parse_instant,
)
from federated.indicators.definitions import ALL, Indicator, IndicatorSet

__all__ = [
    "Period",
    "Unit",
    "Counts",
    "CellKey",
    "Tally",
    "age_band",
    "units_of",
    "tally",
    "PATHWAY_CONDITIONS",
]

CARE = "https://ipjms.example.org/fhir"
PLAN_ID_SYSTEM = f"{CARE}/sid/care-plan"
PLAN_DEFINITION = f"{CARE}/PlanDefinition/"
ACK_BY_EXT = f"{CARE}/StructureDefinition/care-alert-acknowledge-by"
ACTION_SYSTEM = f"{CARE}/CodeSystem/care-alert-action"
INPATIENT_CLASSES = frozenset({"IMP", "ACUTE", "NONAC"})
VOID = frozenset({"entered-in-error", "cancelled"})
BP_PANEL, SYSTOLIC, DIASTOLIC = "85354-9", "8480-6", "8462-4"
HBA1C = frozenset({"4548-4", "17856-6"})
# pathway key (node/care/pathways) → the feature spec's condition key that enrols in it
PATHWAY_CONDITIONS = {
    "hypertension": "hypertension",
    "type-2-diabetes": "diabetes_t2",
    "copd": "copd",
    "heart-failure": "heart_failure",
}


@dataclass(frozen=True)
class Period:
    """Half-open [start, end), aware UTC."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ValueError("a period must end after it starts")

    def contains(self, at: datetime | None) -> bool:
        return at is not None and self.start <= at < self.end


@dataclass(frozen=True)
class Unit:
    at: datetime  # orders a patient's units: the earliest ``contribution_cap`` count
    numerator: int
    pathway: str | None = None


@dataclass
class Counts:
    numerator: int = 0
    denominator: int = 0


CellKey = tuple[str, str, str]  # (indicator id, dimension, value)


@dataclass
class Tally:
    cells: dict[CellKey, Counts] = field(default_factory=dict)
    patients: int = 0  # patients counted (all of them consented)

    def get(self, indicator: str, dimension: str = ALL, value: str = ALL) -> Counts:
        return self.cells.get((indicator, dimension, value), Counts())


# --- reading resources ------------------------------------------------------------------------


def _condition_active(resource: Mapping[str, Any], at: datetime) -> bool:
    if {c for _, c in _codings(resource.get("verificationStatus"))} & {
        "refuted",
        "entered-in-error",
    }:
        return False
    onset = parse_instant(resource.get("onsetDateTime") or resource.get("recordedDate"))
    if onset is not None and onset > at:
        return False
    abated = parse_instant(resource.get("abatementDateTime"))
    if abated is not None and abated <= at:
        return False
    clinical = {c for _, c in _codings(resource.get("clinicalStatus"))}
    return not (clinical & {"inactive", "resolved", "remission"} and abated is None)


def _of(resources: Iterable[Mapping[str, Any]], kind: str) -> list[Mapping[str, Any]]:
    return [r for r in resources if r.get("resourceType") == kind and r.get("status") not in VOID]


def _has_condition(resources: Sequence[Mapping[str, Any]], key: str, at: datetime) -> bool:
    return any(
        _condition_key(c) == key and _condition_active(c, at)
        for c in resources
        if c.get("resourceType") == "Condition"
    )


def _plan_pathway(plan: Mapping[str, Any]) -> str | None:
    for ident in plan.get("identifier", []):
        if ident.get("system") == PLAN_ID_SYSTEM and "/" in str(ident.get("value", "")):
            key = str(ident["value"]).split("/", 1)[0]
            if key in PATHWAY_CONDITIONS:
                return key
    for canonical in plan.get("instantiatesCanonical", []):
        key = str(canonical).split("|", 1)[0].removeprefix(PLAN_DEFINITION)
        if key in PATHWAY_CONDITIONS:
            return key
    return None


def _plans(resources: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """CarePlan id → pathway key, for the pathway care plans among the resources."""
    out = {}
    for plan in _of(resources, "CarePlan"):
        key = _plan_pathway(plan)
        if key and plan.get("id"):
            out[str(plan["id"])] = key
    return out


def _stays(resources: Sequence[Mapping[str, Any]]) -> list[tuple[datetime, datetime]]:
    """(admission, discharge) of the patient's finished inpatient encounters, by admission."""
    out = []
    for enc in _of(resources, "Encounter"):
        cls = enc.get("class") or {}
        if not isinstance(cls, dict) or cls.get("code") not in INPATIENT_CLASSES:
            continue
        period = enc.get("period") or {}
        start, end = parse_instant(period.get("start")), parse_instant(period.get("end"))
        if start is not None and end is not None and end >= start:
            out.append((start, end))
    return sorted(out)


def _effective(obs: Mapping[str, Any]) -> datetime | None:
    return parse_instant(obs.get("effectiveDateTime") or obs.get("issued"))


def _values(obs: Mapping[str, Any]) -> dict[str, tuple[float, str]]:
    """LOINC code → (value, unit) of an Observation and its components."""
    out = {}
    for part in [obs, *obs.get("component", [])]:
        vq = part.get("valueQuantity") or {}
        value = vq.get("value")
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        for system, code in _codings(part.get("code")):
            if system == LOINC:
                out[code] = (float(value), str(vq.get("code") or vq.get("unit") or ""))
    return out


def _loinc_codes(obs: Mapping[str, Any]) -> set[str]:
    return {c for s, c in _codings(obs.get("code")) if s == LOINC}


# --- the counting functions -------------------------------------------------------------------


def _readmission(
    ind: Indicator, resources: Sequence[Mapping[str, Any]], period: Period, as_of: datetime
) -> list[Unit]:
    window = timedelta(days=int(ind.params.get("window_days", 30)))
    condition = ind.params.get("condition")
    stays = _stays(resources)
    units = []
    for _admitted, discharged in stays:
        if not period.contains(discharged) or discharged + window > as_of:
            continue
        if condition and not _has_condition(resources, str(condition), discharged):
            continue
        back = any(discharged < start <= discharged + window for start, _ in stays)
        units.append(Unit(discharged, int(back)))
    return units


def _length_of_stay(
    ind: Indicator, resources: Sequence[Mapping[str, Any]], period: Period, as_of: datetime
) -> list[Unit]:
    cap = ind.value_cap
    return [
        Unit(end, min(max((end.date() - start.date()).days, 0), cap))
        for start, end in _stays(resources)
        if period.contains(end) and end <= as_of
    ]


def _hypertension_control(
    ind: Indicator, resources: Sequence[Mapping[str, Any]], period: Period, as_of: datetime
) -> list[Unit]:
    readings = []
    for obs in _of(resources, "Observation"):
        at = _effective(obs)
        values = _values(obs)
        is_bp = BP_PANEL in _loinc_codes(obs) and SYSTOLIC in values and DIASTOLIC in values
        if is_bp and at is not None and period.contains(at) and at <= as_of:
            readings.append((at, values[SYSTOLIC][0], values[DIASTOLIC][0]))
    if not readings:
        return []
    last = max(r[0] for r in readings)
    hypertensive = _has_condition(resources, "hypertension", last) or "hypertension" in set(
        _plans(resources).values()
    )
    if not hypertensive:
        return []
    window = timedelta(days=int(ind.params.get("window_days", 7)))
    recent = [r for r in readings if last - window < r[0] <= last]
    sys_mean = sum(r[1] for r in recent) / len(recent)
    dia_mean = sum(r[2] for r in recent) / len(recent)
    controlled = sys_mean < float(ind.params["systolic_below"]) and dia_mean < float(
        ind.params["diastolic_below"]
    )
    return [Unit(last, int(controlled))]


def _hba1c_percent(value: float, unit: str) -> float:
    """HbA1c in % (NGSP); IFCC mmol/mol converted by the NGSP/IFCC master equation."""
    if unit.replace(" ", "").lower() == "mmol/mol":
        return value / 10.929 + 2.15
    return value


def _diabetes_control(
    ind: Indicator, resources: Sequence[Mapping[str, Any]], period: Period, as_of: datetime
) -> list[Unit]:
    tests = []
    for obs in _of(resources, "Observation"):
        at = _effective(obs)
        if at is None or not period.contains(at) or at > as_of:
            continue
        for code, (value, unit) in _values(obs).items():
            if code in HBA1C:
                tests.append((at, _hba1c_percent(value, unit)))
    if not tests:
        return []
    last_at, last_value = max(tests)
    diabetic = _has_condition(resources, "diabetes_t2", last_at) or "type-2-diabetes" in set(
        _plans(resources).values()
    )
    if not diabetic:
        return []
    return [Unit(last_at, int(last_value < float(ind.params["hba1c_below"])))]


def _follow_up_completion(
    ind: Indicator, resources: Sequence[Mapping[str, Any]], period: Period, as_of: datetime
) -> list[Unit]:
    plans = _plans(resources)
    units = []
    for task in resources:
        if task.get("resourceType") != "Task" or task.get("status") in (
            "cancelled",
            "rejected",
            "entered-in-error",
        ):
            continue
        due = parse_instant(((task.get("restriction") or {}).get("period") or {}).get("end"))
        if not period.contains(due) or due is None:
            continue
        pathway = next(
            (
                plans[ref.split("/", 1)[1]]
                for ref in (str(b.get("reference", "")) for b in task.get("basedOn", []))
                if ref.startswith("CarePlan/") and ref.split("/", 1)[1] in plans
            ),
            None,
        )
        if pathway is None:
            continue
        units.append(Unit(due, int(task.get("status") == "completed"), pathway))
    return units


def _alerts_acknowledged(
    ind: Indicator, resources: Sequence[Mapping[str, Any]], period: Period, as_of: datetime
) -> list[Unit]:
    severity = str(ind.params.get("severity", "high"))
    units = []
    for issue in _of(resources, "DetectedIssue"):
        if issue.get("severity") != severity:
            continue
        identified = parse_instant(issue.get("identifiedDateTime"))
        ack_by = next(
            (
                parse_instant(e.get("valueDateTime"))
                for e in issue.get("extension", [])
                if e.get("url") == ACK_BY_EXT
            ),
            None,
        )
        if identified is None or ack_by is None or not period.contains(identified):
            continue
        pathway = str(issue.get("reference", "")).split("|", 1)[0].removeprefix(PLAN_DEFINITION)
        if pathway not in PATHWAY_CONDITIONS:
            continue
        in_time = any(
            (ACTION_SYSTEM, "acknowledged") in _codings(m.get("action"))
            and (done := parse_instant(m.get("date"))) is not None
            and done <= ack_by
            for m in issue.get("mitigation", [])
        )
        units.append(Unit(identified, int(in_time), pathway))
    return units


def _pathway_enrolment(
    ind: Indicator, resources: Sequence[Mapping[str, Any]], period: Period, as_of: datetime
) -> list[Unit]:
    at = min(period.end, as_of) - timedelta(microseconds=1)
    enrolled = {
        _plan_pathway(p)
        for p in _of(resources, "CarePlan")
        if p.get("status") in ("active", "completed", "on-hold")
        and (parse_instant(p.get("created") or (p.get("period") or {}).get("start")) or at) <= at
    }
    return [
        Unit(at + timedelta(microseconds=i), int(key in enrolled), key)
        for i, (key, condition) in enumerate(PATHWAY_CONDITIONS.items())
        if _has_condition(resources, condition, at)
    ]


_COUNTERS = {
    "readmission": _readmission,
    "length_of_stay": _length_of_stay,
    "hypertension_control": _hypertension_control,
    "diabetes_control": _diabetes_control,
    "follow_up_completion": _follow_up_completion,
    "alerts_acknowledged": _alerts_acknowledged,
    "pathway_enrolment": _pathway_enrolment,
}


def units_of(
    ind: Indicator, resources: Sequence[Mapping[str, Any]], period: Period, as_of: datetime
) -> list[Unit]:
    """The units ``ind`` counts for one patient, capped at ``contribution_cap`` (earliest)."""
    found = _COUNTERS[ind.count](ind, resources, period, as_of)
    return sorted(found, key=lambda u: (u.at, u.pathway or ""))[: ind.contribution_cap]


# --- strata and the tally ---------------------------------------------------------------------


def age_band(birth: date | None, on: date) -> str:
    if birth is None:
        return "unknown"
    years = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    for limit, band in ((18, "0-17"), (45, "18-44"), (65, "45-64"), (75, "65-74")):
        if years < limit:
            return band
    return "75+"


def _patient_strata(resources: Sequence[Mapping[str, Any]], period: Period) -> dict[str, str]:
    patient = next((r for r in resources if r.get("resourceType") == "Patient"), {})
    born = parse_instant(patient.get("birthDate"))
    sex = str(patient.get("gender") or "unknown")
    on = (period.end - timedelta(microseconds=1)).astimezone(UTC).date()
    return {
        "age_band": age_band(born.date() if born else None, on),
        "sex": sex if sex in ("female", "male", "other") else "unknown",
    }


def tally(
    patients: Iterable[Sequence[Mapping[str, Any]]],
    indicators: IndicatorSet,
    selected: Sequence[str],
    period: Period,
    as_of: datetime,
) -> Tally:
    """The exact counts per cell over ``patients`` (each: one patient's resources; the caller
    passes only patients whose consent permits the purpose). Every cell of every selected
    indicator's dimensions is present, zeros included (so what is released never depends on
    which cells happen to be empty)."""
    chosen = [indicators.get(i) for i in selected]
    out = Tally()
    for ind in chosen:
        for dim in ind.dimensions():
            for value in indicators.values(dim):
                out.cells[(ind.id, dim, value)] = Counts()
    for resources in patients:
        out.patients += 1
        strata = _patient_strata(resources, period)
        for ind in chosen:
            for unit in units_of(ind, resources, period, as_of):
                for dim in ind.dimensions():
                    if dim == ALL:
                        value = ALL
                    else:
                        value = (unit.pathway or "") if dim == "pathway" else strata[dim]
                    cell = out.cells.get((ind.id, dim, value))
                    if cell is None:  # a value outside the vocabulary (e.g. age unknown)
                        continue
                    cell.numerator += unit.numerator
                    cell.denominator += 1
    return out
