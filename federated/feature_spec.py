"""The versioned feature spec ``readmission-30d@1``: a patient's FHIR resources → samples.

Pure functions over plain dicts (no I/O, no torch). The spec is a contract between the nodes
that compute features and the models trained on them: changing a definition means a new version.

One sample per finished inpatient discharge (Encounter.class IMP/ACUTE/NONAC with period.end):

- label: another inpatient Encounter starts within 30 days (0 < start − discharge ≤ 30 × 24 h).
  Discharges later than ``as_of − 30 days`` are censored (no sample).
- demographics: age at discharge, sex;
- conditions active at discharge (onset ≤ discharge, not abated before it, clinicalStatus not
  inactive/resolved/remission, verificationStatus not refuted/entered-in-error): heart failure,
  CKD, COPD, type 2 diabetes, hypertension — by SNOMED CT or ICD-10 (the code lists below);
- most recent value at or before discharge of BNP, eGFR, creatinine, HbA1c, SpO2, systolic BP,
  heart rate, weight — each with a missing indicator (missing → transformed value 0);
- active medications at discharge (MedicationRequest status active, authoredOn ≤ discharge);
- prior inpatient admissions starting in the 365 days before this stay's start;
- length of stay (days).

Every feature is scaled by a fixed, documented transform (no data-dependent statistics, so no
normalisation statistics ever leave a node). The codes and the risk-relevant transforms follow
node/feeds/synthetic/readmission.py, duplicated here as this spec's own constants on purpose:
federated code never imports node.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from protos.model_card import READMISSION_SPEC, READMISSION_TASK

__all__ = [
    "SPEC_ID",
    "TASK",
    "FEATURE_NAMES",
    "NATIONAL_ID_SYSTEMS",
    "CONDITION_CODES",
    "LAB_CODES",
    "Sample",
    "extract_samples",
    "parse_instant",
]

# The task and spec ids are the model-card contract's (protos.model_card), where the registry
# reads them too; this module is the implementation of that spec id.
TASK = READMISSION_TASK
SPEC_ID = READMISSION_SPEC
READMISSION_WINDOW = timedelta(days=30)
PRIOR_WINDOW = timedelta(days=365)

# Which Patient identifiers are national ids, in preference order. Duplicated as data from
# node/identity.py (the pseudonym rule is trust.pseudonym over this value): federated code may
# not import node, and the spec is the contract the two sides share.
NATIONAL_ID_SYSTEMS = (
    "https://ipjms.example.org/fhir/sid/national-id",
    "http://hl7.org/fhir/sid/us-ssn",
)

SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
ICD10_CM = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"

INPATIENT_CLASSES = frozenset({"IMP", "ACUTE", "NONAC"})

# condition key → (SNOMED CT codes, ICD-10 code prefixes)
CONDITION_CODES: dict[str, tuple[frozenset[str], tuple[str, ...]]] = {
    "heart_failure": (frozenset({"84114007", "42343007", "88805009", "85232009"}), ("I50",)),
    "ckd": (frozenset({"709044004", "431855005", "431856006", "433144002"}), ("N18",)),
    "copd": (frozenset({"13645005", "195951007"}), ("J44",)),
    "diabetes_t2": (frozenset({"44054006"}), ("E11",)),
    "hypertension": (frozenset({"38341003", "59621000"}), ("I10",)),
}

# measurement key → LOINC codes (first match wins; components are searched too)
LAB_CODES: dict[str, tuple[str, ...]] = {
    "bnp": ("42637-9", "30934-4"),
    "egfr": ("33914-3", "62238-1", "48642-3", "48643-1"),
    "creatinine": ("2160-0", "38483-4"),
    "hba1c": ("4548-4", "17856-6"),
    "spo2": ("59408-5", "2708-6"),
    "systolic": ("8480-6",),
    "heart_rate": ("8867-4",),
    "weight": ("29463-7",),
}


def _scaled(key: str, value: float) -> float:
    """Fixed clinical transforms: centred on a typical value, about unit spread."""
    if key == "bnp":
        return math.log(max(value, 5.0) / 100.0)
    if key == "egfr":
        return (60.0 - min(value, 90.0)) / 15.0
    if key == "creatinine":
        return math.log(max(value, 0.2))
    if key == "hba1c":
        return value - 7.0
    if key == "spo2":
        return (95.0 - min(value, 100.0)) / 3.0
    if key == "systolic":
        return (value - 130.0) / 20.0
    if key == "heart_rate":
        return (value - 80.0) / 15.0
    if key == "weight":
        return (value - 75.0) / 20.0
    raise KeyError(key)


FEATURE_NAMES: tuple[str, ...] = (
    "age_per_decade_over_65",
    "sex_female",
    *(f"has_{k}" for k in CONDITION_CODES),
    *(f"{k}_scaled" for k in LAB_CODES),
    *(f"{k}_missing" for k in LAB_CODES),
    "active_medications_per_5",
    "prior_admissions_12m",
    "log_length_of_stay",
)


@dataclass(frozen=True)
class Sample:
    """One discharge. ``patient_id``/``encounter_id`` are local ids; they never leave the node."""

    patient_id: str
    encounter_id: str
    discharge: datetime
    features: tuple[float, ...]
    label: int | None  # None: not yet observable (scoring only)


def parse_instant(value: str | None) -> datetime | None:
    """A FHIR date/dateTime/instant → aware UTC datetime (dates at 00:00 UTC)."""
    if not value:
        return None
    text = value.strip()
    try:
        if len(text) == 4:
            return datetime(int(text), 1, 1, tzinfo=UTC)
        if len(text) == 7:
            return datetime(int(text[:4]), int(text[5:7]), 1, tzinfo=UTC)
        if len(text) == 10:
            d = date.fromisoformat(text)
            return datetime(d.year, d.month, d.day, tzinfo=UTC)
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _codings(concept: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    if not concept:
        return []
    return [(str(c.get("system", "")), str(c.get("code", ""))) for c in concept.get("coding", [])]


def _condition_key(resource: Mapping[str, Any]) -> str | None:
    for system, code in _codings(resource.get("code")):
        for key, (snomed, icd_prefixes) in CONDITION_CODES.items():
            if system == SNOMED and code in snomed:
                return key
            if system in (ICD10, ICD10_CM) and code.upper().startswith(icd_prefixes):
                return key
    return None


def _condition_active_at(resource: Mapping[str, Any], at: datetime) -> bool:
    clinical = {c for _, c in _codings(resource.get("clinicalStatus"))}
    if clinical & {"inactive", "resolved", "remission"}:
        abated = parse_instant(resource.get("abatementDateTime"))
        if abated is None or abated <= at:
            return False
    verification = {c for _, c in _codings(resource.get("verificationStatus"))}
    if verification & {"refuted", "entered-in-error"}:
        return False
    onset = parse_instant(resource.get("onsetDateTime") or resource.get("recordedDate"))
    if onset is not None and onset > at:
        return False
    abated = parse_instant(resource.get("abatementDateTime"))
    return abated is None or abated > at


def _quantities(resource: Mapping[str, Any]) -> Iterable[tuple[str, float]]:
    """(LOINC code, numeric value) pairs of an Observation, including components."""
    parts = [resource, *resource.get("component", [])]
    for part in parts:
        vq = part.get("valueQuantity")
        if not vq or not isinstance(vq.get("value"), int | float):
            continue
        for system, code in _codings(part.get("code")):
            if system == LOINC:
                yield code, float(vq["value"])


def _encounter_class(resource: Mapping[str, Any]) -> str:
    cls = resource.get("class") or {}
    return str(cls.get("code", "")) if isinstance(cls, dict) else ""


@dataclass(frozen=True)
class _Stay:
    encounter_id: str
    start: datetime
    end: datetime | None


def _age_years(birth: date, at: datetime) -> float:
    d = at.date()
    years = d.year - birth.year - ((d.month, d.day) < (birth.month, birth.day))
    return float(years)


def extract_samples(
    resources: Iterable[Mapping[str, Any]],
    *,
    as_of: datetime | None = None,
    include_unlabelled: bool = False,
) -> list[Sample]:
    """All samples of one patient (their resources, e.g. the entries of ``$everything``).

    ``as_of`` is the cohort's "now" (default: the current time); discharges within 30 days of it
    have no observable label and are skipped unless ``include_unlabelled`` (scoring).
    """
    as_of = as_of or datetime.now(UTC)
    patient: Mapping[str, Any] | None = None
    stays: list[_Stay] = []
    conditions: list[tuple[str, Mapping[str, Any]]] = []
    measurements: dict[str, list[tuple[datetime, float]]] = {k: [] for k in LAB_CODES}
    meds: list[Mapping[str, Any]] = []
    code_to_key = {code: key for key, codes in LAB_CODES.items() for code in codes}
    for res in resources:
        rtype = res.get("resourceType")
        if rtype == "Patient":
            patient = res
        elif rtype == "Encounter":
            if _encounter_class(res) not in INPATIENT_CLASSES:
                continue
            if res.get("status") in ("cancelled", "entered-in-error"):
                continue
            period = res.get("period") or {}
            start = parse_instant(period.get("start"))
            if start is None:
                continue
            stays.append(_Stay(str(res.get("id", "")), start, parse_instant(period.get("end"))))
        elif rtype == "Condition":
            key = _condition_key(res)
            if key:
                conditions.append((key, res))
        elif rtype == "Observation":
            if res.get("status") in ("entered-in-error", "cancelled", "preliminary"):
                continue
            at = parse_instant(res.get("effectiveDateTime") or res.get("issued"))
            if at is None:
                continue
            for code, value in _quantities(res):
                mkey = code_to_key.get(code)
                if mkey:
                    measurements[mkey].append((at, value))
        elif rtype == "MedicationRequest":
            meds.append(res)
    if patient is None:
        return []
    birth = parse_instant(patient.get("birthDate"))
    female = 1.0 if patient.get("gender") == "female" else 0.0
    for series in measurements.values():
        series.sort(key=lambda item: item[0])
    stays.sort(key=lambda s: s.start)
    samples: list[Sample] = []
    for stay in stays:
        if stay.end is None or stay.end > as_of:
            continue
        discharge = stay.end
        observable = discharge + READMISSION_WINDOW <= as_of
        if not observable and not include_unlabelled:
            continue
        readmitted = any(
            timedelta(0) < other.start - discharge <= READMISSION_WINDOW
            for other in stays
            if other is not stay
        )
        age = _age_years(birth.date(), discharge) if birth else 65.0
        feats: list[float] = [(age - 65.0) / 10.0, female]
        active = {k for k, res in conditions if _condition_active_at(res, discharge)}
        feats += [1.0 if k in active else 0.0 for k in CONDITION_CODES]
        scaled: list[float] = []
        missing: list[float] = []
        for key in LAB_CODES:
            latest = None
            for at, value in measurements[key]:
                if at <= discharge:
                    latest = value
                else:
                    break
            scaled.append(_scaled(key, latest) if latest is not None else 0.0)
            missing.append(0.0 if latest is not None else 1.0)
        feats += scaled + missing
        active_meds = sum(
            1
            for m in meds
            if m.get("status") == "active"
            and (parse_instant(m.get("authoredOn")) or discharge) <= discharge
        )
        feats.append(active_meds / 5.0)
        prior = sum(
            1
            for other in stays
            if other is not stay and stay.start - PRIOR_WINDOW <= other.start < stay.start
        )
        feats.append(float(min(prior, 5)))
        los_days = (discharge - stay.start).total_seconds() / 86400.0
        feats.append(math.log(max(los_days, 0.5)))
        samples.append(
            Sample(
                patient_id=str(patient.get("id", "")),
                encounter_id=stay.encounter_id,
                discharge=discharge,
                features=tuple(feats),
                label=(1 if readmitted else 0) if observable else None,
            )
        )
    return samples
