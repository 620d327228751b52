"""A person's encounters and measurements at one site over the history window (pure, seeded).

Output is plain data (``Journey``); fhir_records.py turns it into FHIR resources.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from node.feeds.synthetic.person import Person
from node.feeds.synthetic.profiles import SiteProfile
from node.feeds.synthetic.readmission import (
    ReadmissionFeatures,
    draw_unmeasured_log_odds,
    readmission_probability,
)

__all__ = ["Journey", "Measurement", "Visit", "discharge_features", "simulate_journey"]

READMIT_MAX_GAP_DAYS = 29  # a drawn readmission starts 1–29 days after discharge
NO_READMIT_MIN_GAP_DAYS = 31  # otherwise the next admission starts at least 31 days later


@dataclass(frozen=True)
class Measurement:
    loinc: str
    value: float | tuple[int, int]  # (systolic, diastolic) for the blood-pressure panel 85354-9
    at: datetime


@dataclass
class Visit:
    kind: str  # AMB | IMP
    start: datetime
    end: datetime
    reason: str | None = None  # condition key for inpatient stays
    measurements: list[Measurement] = field(default_factory=list)
    # IMP only: the unmeasured log-odds e drawn at discharge and the full risk (readmission.py)
    unmeasured_log_odds: float | None = None
    readmission_probability: float | None = None
    readmitted: bool | None = None  # IMP only: whether the draw scheduled a readmission


@dataclass
class Journey:
    visits: list[Visit]


def _admission_rate(person: Person, site: SiteProfile, age: int) -> float:
    c = person.conditions
    log_rate = (
        math.log(site.admission_rate_per_year)
        + 0.9 * ("heart_failure" in c)
        + 0.6 * ("copd" in c)
        + 0.5 * ("ckd" in c)
        + 0.3 * ("diabetes" in c)
        + 0.25 * (age - 65) / 10
    )
    return math.exp(log_rate)


def _vitals(person: Person, rng: random.Random, at: datetime, acute: float) -> list[Measurement]:
    p = person.physiology
    systolic = round(p.systolic + rng.gauss(0, 8) + 6 * acute)
    diastolic = round(p.diastolic + rng.gauss(0, 5) + 3 * acute)
    return [
        Measurement("85354-9", (systolic, min(diastolic, systolic - 15)), at),
        Measurement("8867-4", round(p.heart_rate + rng.gauss(0, 6) + 14 * acute), at),
        Measurement("29463-7", round(p.weight_kg + rng.gauss(0, 1.2) + 2 * acute, 1), at),
        Measurement("59408-5", round(min(100.0, p.spo2 + rng.gauss(0, 1.0) - 3 * acute)), at),
    ]


def _kidney(person: Person, rng: random.Random, at: datetime, egfr: float) -> list[Measurement]:
    egfr = max(5.0, egfr)
    age = max(18, person.age_on(at.date()))
    female = 0.742 if person.gender == "female" else 1.0
    # MDRD inverted: eGFR = 175 × Scr^-1.154 × age^-0.203 × (0.742 if female)
    creatinine = (egfr / (175.0 * age**-0.203 * female)) ** (-1 / 1.154)
    return [
        Measurement("2160-0", round(creatinine, 2), at),
        Measurement("33914-3", round(egfr), at),
    ]


def _glycaemia(person: Person, rng: random.Random, at: datetime) -> list[Measurement]:
    hba1c = round(max(4.5, person.physiology.hba1c + rng.gauss(0, 0.3)), 1)
    glucose = round(max(60.0, 28.7 * hba1c - 46.7 + rng.gauss(0, 15)))
    return [Measurement("4548-4", hba1c, at), Measurement("2339-0", glucose, at)]


def _outpatient(person: Person, rng: random.Random, start: datetime) -> Visit:
    visit = Visit("AMB", start, start + timedelta(minutes=rng.choice((15, 20, 30))))
    at = start + timedelta(minutes=5)
    visit.measurements += _vitals(person, rng, at, 0.0)
    c = person.conditions
    if "diabetes" in c:
        visit.measurements += _glycaemia(person, rng, at)
    if c & {"diabetes", "ckd", "hypertension", "heart_failure"}:
        egfr = person.physiology.egfr * rng.uniform(0.92, 1.05)
        visit.measurements += _kidney(person, rng, at, egfr)
    if "heart_failure" in c:
        bnp = person.physiology.bnp * math.exp(rng.gauss(0, 0.25))
        visit.measurements.append(Measurement("42637-9", round(bnp), at))
    return visit


def _stay(person: Person, rng: random.Random, admit: datetime) -> Visit:
    c = person.conditions
    reasons = sorted(c) or ["other"]
    weights = [3.0 if r in ("heart_failure", "copd") else 1.0 for r in reasons]
    reason = rng.choices(reasons, weights)[0]
    mean_los = 3.0 + 2.0 * ("heart_failure" in c) + 1.0 * ("ckd" in c) + 1.0 * ("copd" in c)
    los_days = min(30, max(1, round(math.exp(rng.gauss(math.log(mean_los), 0.45)))))
    discharge = (admit + timedelta(days=los_days)).replace(hour=rng.randrange(10, 17))
    visit = Visit("IMP", admit, discharge, reason=None if reason == "other" else reason)
    at_admit = admit + timedelta(minutes=40)
    at_discharge = discharge - timedelta(hours=2)
    p = person.physiology
    acute_bnp = p.bnp * (rng.uniform(1.5, 3.0) if "heart_failure" in c else rng.uniform(1.0, 1.8))
    acute_egfr = p.egfr * rng.uniform(0.7, 0.95)
    visit.measurements += _vitals(person, rng, at_admit, 1.0)
    visit.measurements += _glycaemia(person, rng, at_admit)
    visit.measurements += _kidney(person, rng, at_admit, acute_egfr)
    visit.measurements.append(Measurement("42637-9", round(acute_bnp), at_admit))
    discharge_bnp = p.bnp * math.exp(rng.gauss(0.25, 0.35))
    visit.measurements += _vitals(person, rng, at_discharge, 0.2)
    visit.measurements += _kidney(person, rng, at_discharge, p.egfr * rng.uniform(0.8, 1.02))
    visit.measurements.append(Measurement("42637-9", round(discharge_bnp), at_discharge))
    return visit


def _latest(visit: Visit, loinc: str) -> float:
    values = [m for m in visit.measurements if m.loinc == loinc]
    latest = max(values, key=lambda m: m.at).value
    assert isinstance(latest, float | int)
    return float(latest)


def discharge_features(
    person: Person, stay: Visit, prior_starts: list[datetime]
) -> ReadmissionFeatures:
    """The documented features at this stay's discharge (see readmission.py)."""
    year_before = stay.start - timedelta(days=365)
    return ReadmissionFeatures(
        age_years=person.age_on(stay.end.date()),
        heart_failure="heart_failure" in person.conditions,
        ckd="ckd" in person.conditions,
        copd="copd" in person.conditions,
        diabetes="diabetes" in person.conditions,
        bnp_pg_ml=_latest(stay, "42637-9"),
        egfr=_latest(stay, "33914-3"),
        hba1c_percent=_latest(stay, "4548-4"),
        prior_admissions_12m=sum(1 for s in prior_starts if year_before <= s < stay.start),
        length_of_stay_days=(stay.end - stay.start).total_seconds() / 86400,
    )


def _at_hour(rng: random.Random, day: datetime, low: int, high: int) -> datetime:
    return day.replace(hour=rng.randrange(low, high), minute=rng.choice((0, 15, 30, 45)))


def simulate_journey(
    person: Person,
    site: SiteProfile,
    rng: random.Random,
    start: datetime,
    end: datetime,
    unmeasured_rng: random.Random,
) -> Journey:
    """Inpatient stays (with the readmission draw) and outpatient visits in [start, end).

    ``unmeasured_rng`` draws each discharge's unmeasured log-odds (readmission.py): a stream of
    its own, so it shifts none of ``rng``'s draws."""
    stays: list[Visit] = []
    age = person.age_on(start.date())
    rate_per_day = _admission_rate(person, site, age) / 365.0
    t = start + timedelta(days=rng.expovariate(rate_per_day))
    while t < end:
        stay = _stay(person, rng, _at_hour(rng, t, 0, 24))
        if stay.end >= end:
            break
        features = discharge_features(person, stay, [s.start for s in stays])
        stay.unmeasured_log_odds = draw_unmeasured_log_odds(unmeasured_rng)
        stay.readmission_probability = readmission_probability(features, stay.unmeasured_log_odds)
        stay.readmitted = rng.random() < stay.readmission_probability
        stays.append(stay)
        if stay.readmitted:
            t = stay.end + timedelta(days=rng.uniform(1.0, READMIT_MAX_GAP_DAYS - 0.5))
        else:
            gap = NO_READMIT_MIN_GAP_DAYS + rng.expovariate(rate_per_day)
            t = stay.end + timedelta(days=gap)
        t = max(t, stay.end + timedelta(hours=12))

    chronic = bool(person.conditions)
    interval = site.outpatient_interval_chronic if chronic else site.outpatient_interval_healthy
    visits: list[Visit] = []
    day = start + timedelta(days=rng.uniform(0, interval))
    while day < end:
        begin = _at_hour(rng, day, 8, 17)
        busy = any(s.start - timedelta(days=1) <= begin <= s.end + timedelta(days=1) for s in stays)
        if not busy and begin < end:
            visits.append(_outpatient(person, rng, begin))
        day += timedelta(days=interval * rng.uniform(0.7, 1.3))
    return Journey(sorted(stays + visits, key=lambda v: v.start))
