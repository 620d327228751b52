"""What makes a tertiary hospital's cohort differ from a community clinic's: one table."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PROFILES", "REGIONAL_AGE", "AgeModel", "SiteProfile", "profile"]


@dataclass(frozen=True)
class AgeModel:
    mean: float
    sd: float
    low: int
    high: int


@dataclass(frozen=True)
class SiteProfile:
    name: str
    age: AgeModel
    # Condition prevalence: logit P = intercept + age_slope × (age − 60) / 10 (+ comorbidity bonus,
    # see person.py). Tertiary intercepts are ≥ community ones for every condition, so a person
    # shared by both sites has at the community site a subset of their tertiary conditions.
    condition_intercepts: dict[str, float]
    # Yearly rate of (index) inpatient admissions for a 65-year-old without chronic disease.
    admission_rate_per_year: float
    # Days between outpatient visits for patients with / without a chronic condition.
    outpatient_interval_chronic: int
    outpatient_interval_healthy: int


CONDITION_AGE_SLOPES = {
    "hypertension": 0.5,
    "diabetes": 0.3,
    "copd": 0.4,
    "heart_failure": 0.6,
    "ckd": 0.5,
}

PROFILES: dict[str, SiteProfile] = {
    "tertiary": SiteProfile(
        name="tertiary",
        age=AgeModel(mean=68.0, sd=12.0, low=25, high=97),
        condition_intercepts={
            "hypertension": 0.6,
            "diabetes": -0.5,
            "copd": -1.3,
            "heart_failure": -1.8,
            "ckd": -1.9,
        },
        admission_rate_per_year=0.3,
        outpatient_interval_chronic=100,
        outpatient_interval_healthy=240,
    ),
    "community": SiteProfile(
        name="community",
        age=AgeModel(mean=50.0, sd=15.0, low=18, high=95),
        condition_intercepts={
            "hypertension": -0.4,
            "diabetes": -1.4,
            "copd": -2.4,
            "heart_failure": -3.4,
            "ckd": -3.2,
        },
        admission_rate_per_year=0.08,
        outpatient_interval_chronic=120,
        outpatient_interval_healthy=365,
    ),
}

# Age distribution of people drawn from a shared regional population (known at several sites).
REGIONAL_AGE = AgeModel(mean=62.0, sd=14.0, low=20, high=95)


def profile(name: str) -> SiteProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; use one of {sorted(PROFILES)}") from None
