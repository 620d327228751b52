"""Export the synthetic cohorts of three sites as one CSV per centre for ``ipjms fl bench``.

The records come from node.feeds' seeded generator (the same Bundles ``ipjms node seed`` writes
into a node's store); the features are computed by the federated feature spec
(readmission-30d@1) exactly as a SuperNode computes them from its store.

    .venv/bin/python bench/export_synthetic_cohorts.py --out bench/data/readmission [--seed S]

``--seed S`` draws other patients from the same generator (each site's seed + 1000·S); seed 0 is
the documented default cohort.
"""

from __future__ import annotations

import argparse
import csv
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, bench/ is sys.path[0] and bench/federated.py would shadow the package.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from federated.feature_spec import FEATURE_NAMES, extract_samples  # noqa: E402
from node.feeds.synthetic import generate_site, reference_date  # noqa: E402

LABEL = "readmitted_30d"
PATIENT = "patient"  # the patient's number within the site: the privacy unit, not a feature
# site name → (profile, patients, seed): one tertiary hospital, two community clinics.
SITES = {
    "tertiary": ("tertiary", 1500, 11),
    "clinic-a": ("community", 2500, 12),
    "clinic-b": ("community", 2500, 13),
}


def export(
    out: Path, scale: float = 1.0, clinic_patients: int | None = None, seed: int = 0
) -> dict[str, tuple[int, int]]:
    out.mkdir(parents=True, exist_ok=True)
    ref = reference_date()
    as_of = datetime(ref.year, ref.month, ref.day, tzinfo=UTC)
    counts = {}
    for name, (profile, patients, site_seed) in SITES.items():
        if clinic_patients is not None and profile == "community":
            patients = clinic_patients
        n = max(1, int(patients * scale))
        rows = []
        patients: dict[str, int] = {}
        for bundle in generate_site(profile, n, site_seed + 1000 * seed):
            resources = []
            for entry in bundle["entry"]:
                res = dict(entry["resource"])
                res.setdefault("id", entry["fullUrl"].rsplit(":", 1)[-1])
                resources.append(res)
            for s in extract_samples(resources, as_of=as_of):
                number = patients.setdefault(s.patient_id, len(patients))
                rows.append([*(round(v, 5) for v in s.features), number, s.label])
        with (out / f"{name}.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow([*FEATURE_NAMES, PATIENT, LABEL])
            writer.writerows(rows)
        counts[name] = (len(rows), sum(r[-1] for r in rows))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/data/readmission"))
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the patients")
    parser.add_argument("--clinic-patients", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0, help="cohort seed (0: the default)")
    args = parser.parse_args()
    for name, (n, pos) in export(args.out, args.scale, args.clinic_patients, args.seed).items():
        print(f"{name}: {n} discharges, {pos} readmitted within 30 days")


if __name__ == "__main__":
    main()
