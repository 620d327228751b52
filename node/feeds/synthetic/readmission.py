"""The documented 30-day readmission risk function the synthetic cohorts follow.

After every inpatient discharge the generator computes ``readmission_probability(features)`` and
draws one uniform number: below the probability, the next inpatient admission starts 1–29 days
after the discharge (a 30-day readmission); otherwise the next admission, if any, starts more
than 30 days later. A model trained on these features can therefore learn this function.

Feature definitions (all measured from the FHIR records the generator writes):

- ``age_years``: whole years between Patient.birthDate and the discharge (Encounter.period.end);
- ``heart_failure`` / ``ckd`` / ``copd`` / ``diabetes``: 1 if the patient has the Condition
  (SNOMED 84114007 / 709044004 / 13645005 / 44054006) with onset before the discharge, else 0;
- ``bnp_pg_ml``: the latest BNP (LOINC 42637-9, pg/mL) effective at or before the discharge;
- ``egfr``: the latest eGFR (LOINC 33914-3, mL/min/{1.73_m2}) at or before the discharge;
- ``hba1c_percent``: the latest HbA1c (LOINC 4548-4, %) at or before the discharge;
- ``prior_admissions_12m``: inpatient (IMP) Encounters whose start lies in the 365 days before
  this stay's start (this stay excluded);
- ``length_of_stay_days``: (period.end − period.start) of this stay in days (fractional).

Every inpatient stay measures BNP, eGFR and HbA1c on admission and BNP and eGFR again on the
discharge day, so the "latest" values always exist. The label is "another IMP Encounter starts
within 30 days (≤ 30 × 24 h) after period.end"; it is complete only for discharges at least 30
days before the cohort's reference date (later ones are censored).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "COEFFICIENTS",
    "INTERCEPT",
    "ReadmissionFeatures",
    "linear_terms",
    "readmission_probability",
]


@dataclass(frozen=True)
class ReadmissionFeatures:
    age_years: float
    heart_failure: bool
    ckd: bool
    copd: bool
    diabetes: bool
    bnp_pg_ml: float
    egfr: float
    hba1c_percent: float
    prior_admissions_12m: int
    length_of_stay_days: float


INTERCEPT = -4.6

# name of the transformed term → (coefficient, transform as documented in README.md)
COEFFICIENTS: dict[str, float] = {
    "age_per_decade_over_65": 0.30,  # (age_years − 65) / 10
    "heart_failure": 0.50,  # 0/1
    "ckd": 0.40,  # 0/1
    "copd": 0.35,  # 0/1
    "diabetes": 0.20,  # 0/1
    "log_bnp_over_100": 0.40,  # ln(max(bnp, 5) / 100)
    "egfr_deficit_per_15": 0.25,  # (60 − min(egfr, 90)) / 15
    "hba1c_over_7": 0.15,  # hba1c_percent − 7
    "prior_admissions_12m": 0.35,  # min(prior_admissions_12m, 5)
    "log_length_of_stay": 0.30,  # ln(max(length_of_stay_days, 0.5))
}


def linear_terms(f: ReadmissionFeatures) -> dict[str, float]:
    """The transformed terms the coefficients multiply (same keys as COEFFICIENTS)."""
    return {
        "age_per_decade_over_65": (f.age_years - 65.0) / 10.0,
        "heart_failure": float(f.heart_failure),
        "ckd": float(f.ckd),
        "copd": float(f.copd),
        "diabetes": float(f.diabetes),
        "log_bnp_over_100": math.log(max(f.bnp_pg_ml, 5.0) / 100.0),
        "egfr_deficit_per_15": (60.0 - min(f.egfr, 90.0)) / 15.0,
        "hba1c_over_7": f.hba1c_percent - 7.0,
        "prior_admissions_12m": float(min(f.prior_admissions_12m, 5)),
        "log_length_of_stay": math.log(max(f.length_of_stay_days, 0.5)),
    }


def readmission_probability(f: ReadmissionFeatures) -> float:
    """P(30-day readmission) = 1 / (1 + exp(−(INTERCEPT + Σ coefficient × term)))."""
    terms = linear_terms(f)
    logit = INTERCEPT + sum(COEFFICIENTS[name] * value for name, value in terms.items())
    return 1.0 / (1.0 + math.exp(-logit))
