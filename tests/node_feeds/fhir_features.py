"""Recompute the documented readmission features and labels from generated FHIR Bundles alone
(the way a feature spec reading a node's store would), so tests check the data, not the generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from node.feeds.synthetic.readmission import ReadmissionFeatures

SNOMED_FLAGS = {
    "84114007": "heart_failure",
    "709044004": "ckd",
    "13645005": "copd",
    "44054006": "diabetes",
}


@dataclass
class Discharge:
    features: ReadmissionFeatures
    readmitted: bool
    censored: bool


def _when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _age(birth: date, day: date) -> int:
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def discharges(bundle: dict[str, Any], reference: date) -> list[Discharge]:
    resources = [e["resource"] for e in bundle["entry"]]
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    birth = date.fromisoformat(patient["birthDate"])
    flags = {
        SNOMED_FLAGS[c["code"]]
        for r in resources
        if r["resourceType"] == "Condition"
        for c in r["code"]["coding"]
        if c["system"] == "http://snomed.info/sct" and c["code"] in SNOMED_FLAGS
    }
    stays = sorted(
        (_when(r["period"]["start"]), _when(r["period"]["end"]))
        for r in resources
        if r["resourceType"] == "Encounter" and r["class"]["code"] == "IMP"
    )
    obs: dict[str, list[tuple[datetime, float]]] = {}
    for r in resources:
        if r["resourceType"] == "Observation" and "valueQuantity" in r:
            code = r["code"]["coding"][0]["code"]
            obs.setdefault(code, []).append(
                (_when(r["effectiveDateTime"]), r["valueQuantity"]["value"])
            )

    def latest(code: str, at: datetime) -> float:
        return max((v for v in obs.get(code, []) if v[0] <= at), key=lambda v: v[0])[1]

    ref_dt = (
        datetime(reference.year, reference.month, reference.day, tzinfo=stays[0][0].tzinfo)
        if stays
        else None
    )
    out = []
    for start, end in stays:
        features = ReadmissionFeatures(
            age_years=_age(birth, end.date()),
            heart_failure="heart_failure" in flags,
            ckd="ckd" in flags,
            copd="copd" in flags,
            diabetes="diabetes" in flags,
            bnp_pg_ml=latest("42637-9", end),
            egfr=latest("33914-3", end),
            hba1c_percent=latest("4548-4", end),
            prior_admissions_12m=sum(
                1 for s, _ in stays if start - timedelta(days=365) <= s < start
            ),
            length_of_stay_days=(end - start).total_seconds() / 86400,
        )
        readmitted = any(end < s <= end + timedelta(days=30) for s, _ in stays)
        assert ref_dt is not None
        out.append(Discharge(features, readmitted, censored=end > ref_dt - timedelta(days=30)))
    return out
