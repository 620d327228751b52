"""A synthetic person: demographics, chronic conditions and baseline physiology (pure, seeded).

Everything here is drawn from the person's own random stream, so the same person (same
population key and index) has the same name, national id, birth date and baseline values at
every site that generates them. Which conditions they have depends on the site profile through
coupled uniforms (see profiles.py): one uniform per condition, compared with the profile's
prevalence.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field
from datetime import date, timedelta

from node.feeds.synthetic.profiles import CONDITION_AGE_SLOPES, AgeModel, SiteProfile

__all__ = ["Person", "Physiology", "make_person", "national_id_for"]

GIVEN_FEMALE = (
    "Anna",
    "Maria",
    "Elena",
    "Sofia",
    "Laura",
    "Ines",
    "Clara",
    "Nora",
    "Lea",
    "Mila",
    "Julia",
    "Eva",
    "Rosa",
    "Alma",
    "Hana",
    "Lina",
    "Vera",
    "Iris",
    "Ada",
    "Marta",
)
GIVEN_MALE = (
    "Jonas",
    "Lukas",
    "Marco",
    "Pavel",
    "Tomas",
    "David",
    "Elias",
    "Oskar",
    "Noah",
    "Leon",
    "Adam",
    "Milan",
    "Hugo",
    "Felix",
    "Karl",
    "Ivan",
    "Emil",
    "Anton",
    "Bruno",
    "Otto",
)
FAMILY = (
    "Novak",
    "Horvat",
    "Berger",
    "Keller",
    "Meier",
    "Kovac",
    "Lindqvist",
    "Moreau",
    "Rossi",
    "Santos",
    "Nowak",
    "Fischer",
    "Weber",
    "Schulz",
    "Jansen",
    "Peters",
    "Costa",
    "Ferrari",
    "Laine",
    "Virtanen",
    "Olsen",
    "Hansen",
    "Dubois",
    "Garcia",
    "Silva",
    "Popescu",
    "Varga",
)
CITIES = (
    ("Northbridge", "10"),
    ("Eastvale", "20"),
    ("Riverton", "30"),
    ("Lakeside", "40"),
    ("Millbrook", "50"),
)
STREETS = ("Elm Street", "Station Road", "Church Lane", "Park Avenue", "Mill Road", "High Street")

CONDITION_ORDER = ("hypertension", "diabetes", "copd", "heart_failure", "ckd")


@dataclass(frozen=True)
class Physiology:
    """Baseline values the visits vary around."""

    systolic: float
    diastolic: float
    heart_rate: float
    weight_kg: float
    spo2: float
    hba1c: float
    egfr: float
    bnp: float


@dataclass(frozen=True)
class Person:
    national_id: str
    family: str
    given: str
    gender: str  # male | female
    birth_date: date
    address: dict[str, object]
    conditions: frozenset[str]
    condition_onsets: dict[str, date] = field(compare=False)
    physiology: Physiology = field(compare=False)

    def age_on(self, day: date) -> int:
        years = day.year - self.birth_date.year
        if (day.month, day.day) < (self.birth_date.month, self.birth_date.day):
            years -= 1
        return years


def _luhn_check_digit(digits: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def national_id_for(population_key: str, index: int) -> str:
    """13 digits: 6 from the population key's hash, 6 for the index, 1 Luhn check digit.

    Distinct indexes of one population never collide; different populations differ in the prefix.
    """
    if not 0 <= index < 1_000_000:
        raise ValueError("person index must be in [0, 999999]")
    prefix = int(hashlib.sha256(population_key.encode()).hexdigest(), 16) % 900_000 + 100_000
    body = f"{prefix:06d}{index:06d}"
    return body + _luhn_check_digit(body)


def _draw_age(rng: random.Random, model: AgeModel) -> int:
    return int(min(model.high, max(model.low, round(rng.gauss(model.mean, model.sd)))))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _conditions(
    uniforms: dict[str, float], age: int, site: SiteProfile
) -> tuple[frozenset[str], dict[str, float]]:
    present: set[str] = set()
    probabilities: dict[str, float] = {}
    for name in CONDITION_ORDER:
        logit = site.condition_intercepts[name] + CONDITION_AGE_SLOPES[name] * (age - 60) / 10
        if name == "heart_failure" and "hypertension" in present:
            logit += 0.7
        if name == "ckd":
            logit += 0.6 * ("diabetes" in present) + 0.5 * ("hypertension" in present)
        probabilities[name] = _sigmoid(logit)
        if uniforms[name] < probabilities[name]:
            present.add(name)
    return frozenset(present), probabilities


def make_person(
    rng: random.Random,
    *,
    national_id: str,
    site: SiteProfile,
    age_model: AgeModel,
    reference: date,
) -> Person:
    """Draw one person. ``rng`` is the person's own stream (the same at every site)."""
    gender = "female" if rng.random() < 0.5 else "male"
    given = rng.choice(GIVEN_FEMALE if gender == "female" else GIVEN_MALE)
    family = rng.choice(FAMILY)
    age = _draw_age(rng, age_model)
    birth_date = date(reference.year - age - 1, 1, 1) + timedelta(days=rng.randrange(1, 365))
    city, postal_prefix = rng.choice(CITIES)
    address: dict[str, object] = {
        "use": "home",
        "line": [f"{rng.randrange(1, 180)} {rng.choice(STREETS)}"],
        "city": city,
        "postalCode": f"{postal_prefix}{rng.randrange(100, 999)}",
    }
    # Coupled uniforms and severities: drawn whatever the site, so shared people stay coherent.
    uniforms = {name: rng.random() for name in CONDITION_ORDER}
    severity = {name: rng.random() for name in CONDITION_ORDER}
    onset_years = {name: rng.uniform(0.5, 12.0) for name in CONDITION_ORDER}
    noise = [rng.gauss(0.0, 1.0) for _ in range(8)]

    real_age = (reference - birth_date).days / 365.25
    conditions, _ = _conditions(uniforms, round(real_age), site)
    onsets = {
        name: max(
            birth_date + timedelta(days=365 * 18),
            reference - timedelta(days=int(365 * (3 + onset_years[name]))),
        )
        for name in conditions
    }

    hf, ckd, dm, copd = (c in conditions for c in ("heart_failure", "ckd", "diabetes", "copd"))
    systolic = 148 + 10 * severity["hypertension"] if "hypertension" in conditions else 121
    systolic += 6 * noise[0]
    egfr_normal = max(65.0, 105.0 - 0.7 * max(0.0, real_age - 35) + 6 * noise[1])
    egfr = 15.0 + 45.0 * (1 - severity["ckd"]) if ckd else egfr_normal
    hba1c = 6.6 + 2.4 * severity["diabetes"] + 0.3 * noise[2] if dm else 5.3 + 0.25 * noise[2]
    bnp_log = (math.log(250) + 1.3 * severity["heart_failure"]) if hf else math.log(35)
    bnp_log += 0.35 * noise[3] + 0.012 * max(0.0, real_age - 50)
    physiology = Physiology(
        systolic=systolic,
        diastolic=0.55 * systolic + 8 + 4 * noise[4],
        heart_rate=72 + 6 * hf + 4 * copd + 7 * noise[5],
        weight_kg=(80.0 if gender == "male" else 67.0) + 5 * dm + 12 * noise[6],
        spo2=min(99.0, 97.5 - 3.0 * copd - 1.0 * hf + 0.6 * noise[7]),
        hba1c=max(4.6, hba1c),
        egfr=egfr,
        bnp=math.exp(bnp_log),
    )
    return Person(
        national_id=national_id,
        family=family,
        given=given,
        gender=gender,
        birth_date=birth_date,
        address=address,
        conditions=conditions,
        condition_onsets=onsets,
        physiology=physiology,
    )
