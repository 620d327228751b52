"""Must-show 4 of issue 16: server time of the doctor's pages at size — the panel with
``--patients`` patients under care (default 2,000) and the journey (timeline, trends, plan) of
one patient with ``--resources`` resources (default 5,000).

Run: ``.venv/bin/python bench/web_pages.py [--patients 2000] [--resources 5000] [--repeat 30]``

In process (FastAPI's TestClient on the node app of ``node.app.create_app``, SQLite in a temp
dir, so the time is the server's: routing, session, access seam, store reads, rendering — no
network). Seeds through the store's one write door: ``--patients`` patients, each with an active
CarePlan (a pathway's plan identifier and control status), every 10th with an open
DetectedIssue, every 3rd with a RiskAssessment; then one patient with ``--resources``
Observations, Encounters and Conditions. A doctor signs in through ``/app/sign-in`` (the
node's own login page, code + PKCE).

Measures p50/p95 over ``--repeat`` requests of: ``GET /app/panel`` and, as the baseline in the
same run, the FHIR search the panel starts from (``GET /fhir/CarePlan?status=active&_count=1000``,
one page); ``GET /app/patients/{handle}`` and, as its baseline, ``GET
/fhir/Patient/{id}/$everything`` (the same reads, as JSON). Prints a table and writes
``bench/results/web_pages.json``. Target: p95 ≤ 300 ms for both pages.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# bench/consent.py would shadow the consent package when this runs as a script from bench/
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

from fastapi.testclient import TestClient  # noqa: E402

from deploy.demo.staff_sign_in import sign_in_staff  # noqa: E402
from node.app import create_app  # noqa: E402
from node.settings import load_settings  # noqa: E402

PASSWORD = "bench-password-123"
PLAN_SYSTEM = "https://ipjms.example.org/fhir/sid/care-plan"
CONTROL = "https://ipjms.example.org/fhir/StructureDefinition/care-control-status"
PATHWAYS = ("hypertension", "type-2-diabetes", "copd", "heart-failure")
LOINC = "http://loinc.org"


def _tx(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
            for r in resources
        ],
    }


def seed_panel(store: Any, patients: int, batch: int = 100) -> None:
    now = datetime.now(UTC)
    for start in range(0, patients, batch):
        rows: list[dict[str, Any]] = []
        for i in range(start, min(start + batch, patients)):
            pid, ref = f"bp-{i}", {"reference": f"Patient/bp-{i}"}
            key = PATHWAYS[i % len(PATHWAYS)]
            rows.append(
                {
                    "resourceType": "Patient",
                    "id": pid,
                    "gender": "female",
                    "birthDate": "1950-01-01",
                    "name": [{"text": f"Patient {i:05d}"}],
                }
            )
            rows.append(
                {
                    "resourceType": "CarePlan",
                    "id": f"cp-{i}",
                    "status": "active",
                    "intent": "plan",
                    "subject": ref,
                    "title": key,
                    "identifier": [{"system": PLAN_SYSTEM, "value": f"{key}/{pid}"}],
                    "extension": [
                        {
                            "url": CONTROL,
                            "valueCode": ("controlled", "uncontrolled", "unknown")[i % 3],
                        }
                    ],
                }
            )
            if i % 10 == 0:
                rows.append(
                    {
                        "resourceType": "DetectedIssue",
                        "id": f"di-{i}",
                        "status": "preliminary",
                        "severity": ("high", "moderate")[i % 20 // 10],
                        "patient": ref,
                        "code": {"text": "bench alert"},
                        "identifiedDateTime": now.isoformat(),
                    }
                )
            if i % 3 == 0:
                rows.append(
                    {
                        "resourceType": "RiskAssessment",
                        "id": f"ra-{i}",
                        "status": "final",
                        "subject": ref,
                        "occurrenceDateTime": now.isoformat(),
                        "prediction": [{"probabilityDecimal": (i % 97) / 100}],
                    }
                )
        store.transaction(_tx(rows), writer="bench:seed")


def seed_history(store: Any, resources: int, batch: int = 500) -> str:
    pid, ref = "big-1", {"reference": "Patient/big-1"}
    store.transaction(
        _tx(
            [
                {"resourceType": "Patient", "id": pid, "name": [{"text": "Big One"}]},
                {
                    "resourceType": "CarePlan",
                    "id": "cp-big",
                    "status": "active",
                    "intent": "plan",
                    "subject": ref,
                    "identifier": [{"system": PLAN_SYSTEM, "value": f"heart-failure/{pid}"}],
                },
            ]
        ),
        writer="bench:seed",
    )
    start = datetime.now(UTC) - timedelta(days=resources // 10)
    made = 2
    while made < resources:
        rows = []
        for j in range(made, min(made + batch, resources)):
            when = (start + timedelta(hours=2 * j)).isoformat()
            if j % 25 == 0:
                rows.append(
                    {
                        "resourceType": "Encounter",
                        "id": f"e-{j}",
                        "status": "finished",
                        "class": {"code": "AMB"},
                        "subject": ref,
                        "period": {"start": when},
                    }
                )
            elif j % 50 == 1:
                rows.append(
                    {
                        "resourceType": "Condition",
                        "id": f"c-{j}",
                        "subject": ref,
                        "code": {"text": "Hypertension"},
                        "recordedDate": when[:10],
                    }
                )
            else:
                code, unit, value = (
                    ("29463-7", "kg", 70 + (j % 30) / 10)
                    if j % 2
                    else ("8867-4", "/min", 60 + j % 30)
                )
                rows.append(
                    {
                        "resourceType": "Observation",
                        "id": f"o-{j}",
                        "status": "final",
                        "subject": ref,
                        "effectiveDateTime": when,
                        "code": {"coding": [{"system": LOINC, "code": code}]},
                        "valueQuantity": {
                            "value": value,
                            "unit": unit,
                            "code": unit,
                            "system": "http://unitsofmeasure.org",
                        },
                    }
                )
        store.transaction(_tx(rows), writer="bench:seed")
        made += len(rows)
    return pid


def timed(
    client: TestClient, path: str, repeat: int, headers: dict[str, str] | None = None
) -> dict:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = client.get(path, headers=headers or {})
        samples.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples), 1),
        "p95_ms": round(samples[max(0, int(len(samples) * 0.95) - 1)], 1),
        "max_ms": round(samples[-1], 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, default=2000)
    ap.add_argument("--resources", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="ipjms-web-bench-") as tmp:
        settings = load_settings(Path(tmp) / "node", org_id="org-bench", name="Bench clinic")
        app = create_app(settings)
        app.state.auth.accounts.add_user("dr-bench", PASSWORD, "doctor")
        store = app.state.store
        t0 = time.perf_counter()
        seed_panel(store, args.patients)
        big = seed_history(store, args.resources)
        seeded = time.perf_counter() - t0
        with TestClient(app, base_url="http://127.0.0.1") as client:
            r = sign_in_staff(client, "dr-bench", PASSWORD)
            assert r.status_code == 303, r.text
            token = client.post(
                "/auth/token",
                data={"grant_type": "password", "username": "dr-bench", "password": PASSWORD},
            ).json()["access_token"]
            bearer = {"Authorization": f"Bearer {token}"}
            panel_html = client.get("/app/panel").text
            shown = panel_html.count("/app/patients/")
            # the big patient's handle: the panel is sorted, so look them up by name
            handle_for = client.app.state.portal.sessions  # type: ignore[attr-defined]
            session = next(iter(handle_for._sessions.values()))
            handle = session.handle_for(f"Patient/{big}")
            results = {
                "panel": timed(client, "/app/panel", args.repeat),
                "panel_baseline_fhir_search": timed(
                    client, "/fhir/CarePlan?status=active&_count=1000", args.repeat, bearer
                ),
                "journey": timed(client, f"/app/patients/{handle}", args.repeat),
                "journey_baseline_everything": timed(
                    client, f"/fhir/Patient/{big}/$everything", args.repeat, bearer
                ),
            }
    panel_ratio = results["panel"]["p95_ms"] / results["panel_baseline_fhir_search"]["p95_ms"]
    journey_ratio = results["journey"]["p95_ms"] / results["journey_baseline_everything"]["p95_ms"]
    out = {
        "bench": "web_pages",
        "when": datetime.now(UTC).isoformat(),
        "machine": platform.platform(),
        "patients": args.patients,
        "resources": args.resources,
        "repeat": args.repeat,
        "seed_seconds": round(seeded, 1),
        "panel_rows_on_first_page": shown,
        "results": results,
        "ratio_panel_to_fhir_search_p95": round(panel_ratio, 2),
        "ratio_journey_to_everything_p95": round(journey_ratio, 2),
        "target_p95_ms": 300,
    }
    print(f"{'request':40} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for name, r in results.items():
        print(f"{name:40} {r['p50_ms']:8} {r['p95_ms']:8} {r['max_ms']:8}")
    print(
        f"panel/search p95 ratio {panel_ratio:.2f}; journey/$everything p95 ratio "
        f"{journey_ratio:.2f}; target p95 ≤ 300 ms"
    )
    results_dir = Path(__file__).parent / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / "web_pages.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
