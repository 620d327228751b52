"""Deterministic synthetic cohorts: one FHIR R4 transaction Bundle per patient.

``generate_cohort(profile, patients, seed)`` is the whole public surface for a single site;
``generate_site(...)`` adds people shared with other sites (same national id, name and birth
date everywhere), which referrals and record pulls need.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

from node.feeds.synthetic.fhir_records import MRN_SYSTEM, RECORD_ID_SYSTEM, person_bundle
from node.feeds.synthetic.journey import simulate_journey
from node.feeds.synthetic.person import make_person, national_id_for
from node.feeds.synthetic.profiles import PROFILES, REGIONAL_AGE
from node.feeds.synthetic.profiles import profile as site_profile

__all__ = [
    "DEFAULT_START",
    "HISTORY_DAYS",
    "MRN_SYSTEM",
    "PROFILES",
    "RECORD_ID_SYSTEM",
    "generate_cohort",
    "generate_site",
    "reference_date",
]

DEFAULT_START = date(2023, 1, 1)  # first day of the simulated history (no wall clock)
HISTORY_DAYS = 3 * 365 + 1  # so the default reference date is 2026-01-01


def reference_date(start: date | None = None) -> date:
    """The cohort's 'today': the end of the history window that begins at ``start``."""
    return (start or DEFAULT_START) + timedelta(days=HISTORY_DAYS)


def generate_cohort(
    profile: str,
    patients: int,
    seed: int,
    *,
    start: date | None = None,
    population_seed: int | None = None,
    first_index: int = 0,
) -> Iterator[dict[str, Any]]:
    """Yield one transaction Bundle per patient; the same arguments give identical Bundles.

    - ``profile``: "tertiary" (older, sicker, more inpatient stays) or "community".
    - ``seed``: the site's seed; it drives the clinical record at this site.
    - ``start``: first day of the 3-year history (default 2023-01-01).
    - ``population_seed``: when given, patient ``first_index + i`` is person ``i`` of a regional
      population shared by every site that passes the same ``population_seed`` (and ``start``):
      same national id, name, gender, birth date, address at each site, while each site has its
      own encounters and measurements. Without it the people belong to this site alone.
    """
    site = site_profile(profile)
    if patients < 0:
        raise ValueError("patients must be ≥ 0")
    first = start or DEFAULT_START
    begin = datetime(first.year, first.month, first.day, tzinfo=UTC)
    ref = reference_date(first)
    end = datetime(ref.year, ref.month, ref.day, tzinfo=UTC)
    if population_seed is None:
        population_key = f"site:{profile}:{seed}"
        age_model = site.age
    else:
        population_key = f"population:{population_seed}"
        age_model = REGIONAL_AGE
    for index in range(first_index, first_index + patients):
        person_rng = random.Random(f"{population_key}:person:{index}")
        person = make_person(
            person_rng,
            national_id=national_id_for(population_key, index),
            site=site,
            age_model=age_model,
            reference=ref,
        )
        record_prefix = f"{profile}-{seed}/{population_key}/{index}"
        site_rng = random.Random(f"{record_prefix}:journey")
        # a stream of its own for the unmeasured readmission risk (readmission.py)
        unmeasured_rng = random.Random(f"{record_prefix}:unmeasured-readmission-risk")
        journey = simulate_journey(person, site, site_rng, begin, end, unmeasured_rng)
        yield person_bundle(person, journey, record_prefix)


def generate_site(
    profile: str,
    patients: int,
    seed: int,
    *,
    shared: int = 0,
    population_seed: int = 0,
    start: date | None = None,
) -> Iterator[dict[str, Any]]:
    """A site's whole cohort: ``shared`` people of the regional population ``population_seed``
    (indexes 0..shared-1, known at every site that asks for them) then ``patients - shared``
    people of this site alone. This is what ``ipjms node seed`` calls."""
    if not 0 <= shared <= patients:
        raise ValueError("shared must be between 0 and patients")
    yield from generate_cohort(profile, shared, seed, start=start, population_seed=population_seed)
    yield from generate_cohort(profile, patients - shared, seed, start=start)
