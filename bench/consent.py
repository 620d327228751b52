"""Must-show 7: consent decision latency over the real HTTP API, and envelope throughput.

Run: ``.venv/bin/python bench/consent.py [--patients 10000] [--requests 1000] [--db URL]``

1. Starts a real ``ipjms consent serve`` process (SQLite in a temp dir by default) with a fresh
   regional PKI, stores one consent for each of ``--patients`` patients (bulk-inserted through
   the registry's own schema and FHIR serialisation before the service starts, so seeding is
   not timed), and enrols one patient through the API.
2. Times ``--requests`` sequential ``POST /fhir/Consent/$decide`` calls (org token, random
   patients, a mix of permitted, partially permitted and refused requests; each decision is
   signed and written to the hash-chained ledger, as in production) and, interleaved in the
   same run, the baseline: an authenticated ``GET /fhir/Consent/{id}`` by that patient (token
   check + one-row read).
3. Measures envelope seal+open of a 1 MB payload against raw AES-256-GCM on the same bytes
   (:func:`envelope_throughput.measure_envelope_throughput`).

Prints a table and writes ``bench/results/consent.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from envelope_throughput import measure_envelope_throughput  # noqa: E402

from consent.client import ConsentClient  # noqa: E402
from consent.fhir import to_fhir  # noqa: E402
from consent.policy import ConsentRecord, Provision  # noqa: E402
from consent.schema import consents  # noqa: E402
from consent.store import migrate  # noqa: E402
from deploy.launcher import free_port, start_service  # noqa: E402
from servicekit.storage import make_engine, sqlite_url  # noqa: E402
from trust.pki import init_ca, issue_org  # noqa: E402

CLASSES = ["Condition", "MedicationStatement", "Observation", "AllergyIntolerance", "Procedure"]
CLINICS = ["clinic-b", "clinic-c", "clinic-d"]


def pseudonym(i: int) -> str:
    return f"{i:064x}"


def seed(db_url: str, n: int) -> None:
    engine = make_engine(db_url)
    migrate(engine)
    rng = random.Random(7)
    now = datetime.now(UTC)
    rows = []
    for i in range(n):
        permit = Provision(
            "permit",
            actors=frozenset({rng.choice(CLINICS)}),
            purposes=frozenset({"TREAT"}),
            classes=frozenset(rng.sample(CLASSES[:4], k=rng.randint(2, 4))),
        )
        nested = [
            permit,
            Provision("permit", actors=frozenset({"authority"}), purposes=frozenset({"HRESCH"})),
        ]
        if i % 5 == 0:
            nested.append(Provision("deny", classes=frozenset({"Procedure"})))
        record = ConsentRecord(
            f"seed{i:06d}",
            pseudonym(i),
            "active",
            Provision("deny", provisions=tuple(nested)),
            date_time=now,
        )
        rows.append(
            {
                "id": record.id,
                "patient": record.patient,
                "status": "active",
                "version": 1,
                "body": json.dumps(to_fhir(record)),
                "created_at": now,
                "updated_at": now,
            }
        )
    with engine.begin() as conn:
        for start in range(0, len(rows), 1000):
            conn.execute(consents.insert(), rows[start : start + 1000])
    engine.dispose()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--db", default=None, help="database URL (default: SQLite in a temp dir)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "consent.json")
    args = ap.parse_args()
    console = Console()

    with tempfile.TemporaryDirectory(prefix="ipjms-bench-consent-") as tmp_name:
        tmp = Path(tmp_name)
        init_ca(tmp / "ca")
        hosp = issue_org(tmp / "ca", "hosp-a")
        db_url = args.db or sqlite_url(tmp / "consent", "consent")
        t0 = time.perf_counter()
        seed(db_url, args.patients)
        console.print(
            f"seeded {args.patients} patients' consents in {time.perf_counter() - t0:.1f}s"
        )
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        service = start_service(
            "consent",
            [
                "consent",
                "serve",
                "--data-dir",
                str(tmp / "consent"),
                "--port",
                str(port),
                "--db",
                db_url,
                "--ca-dir",
                str(tmp / "ca"),
            ],
            base_url=base,
            log_dir=tmp / "logs",
        )
        try:
            client = ConsentClient(base, hosp)
            http = httpx.Client(base_url=base, timeout=30)
            code = client.create_enrolment_code(pseudonym(0))["code"]
            http.post(
                "/enrol", json={"code": code, "password": "benchmark password"}
            ).raise_for_status()
            tok = http.post(
                "/auth/patient-token",
                data={"username": pseudonym(0), "password": "benchmark password"},
            )
            patient_headers = {"Authorization": f"Bearer {tok.json()['access_token']}"}
            org_headers = {"Authorization": f"Bearer {client.access_token()}"}
            rng = random.Random(11)

            def decide_once() -> bool:
                i = rng.randrange(args.patients)
                params = [
                    {"name": "patient", "valueString": pseudonym(i)},
                    {"name": "recipient", "valueString": rng.choice(CLINICS)},
                    {"name": "purpose", "valueCode": "TREAT"},
                ]
                params += [{"name": "class", "valueCode": c} for c in rng.sample(CLASSES, k=3)]
                r = http.post(
                    "/fhir/Consent/$decide",
                    headers=org_headers,
                    json={"resourceType": "Parameters", "parameter": params},
                )
                r.raise_for_status()
                return r.json()["parameter"][0]["valueCode"] == "permit"

            def baseline_once() -> None:
                http.get("/fhir/Consent/seed000000", headers=patient_headers).raise_for_status()

            for _ in range(50):  # warm-up (connections, caches)
                decide_once()
                baseline_once()
            decide_ms, base_ms, permits = [], [], 0
            for _ in range(args.requests):
                t = time.perf_counter()
                permits += decide_once()
                decide_ms.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                baseline_once()
                base_ms.append((time.perf_counter() - t) * 1000)
            ledger_ok = None
        finally:
            service.stop()
        from trust.audit_ledger import AuditLedger

        engine = make_engine(db_url)
        report = AuditLedger(engine, create=False).verify()
        engine.dispose()
        ledger_ok = report.ok

    env = measure_envelope_throughput(1 << 20, repeats=20)
    result = {
        "when": datetime.now(UTC).isoformat(),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "database": "sqlite" if not args.db else args.db.split(":", 1)[0],
        "patients_with_consents": args.patients,
        "requests": args.requests,
        "decision_ms": {
            "p50": percentile(decide_ms, 0.5),
            "p99": percentile(decide_ms, 0.99),
            "mean": statistics.fmean(decide_ms),
        },
        "baseline_read_ms": {
            "p50": percentile(base_ms, 0.5),
            "p99": percentile(base_ms, 0.99),
            "mean": statistics.fmean(base_ms),
        },
        "decision_permit_share": permits / args.requests,
        "ledger_verified_after_run": ledger_ok,
        "envelope": env,
    }
    result["decision_vs_baseline_p50"] = (
        result["decision_ms"]["p50"] / result["baseline_read_ms"]["p50"]
    )
    result["decision_vs_baseline_p99"] = (
        result["decision_ms"]["p99"] / result["baseline_read_ms"]["p99"]
    )

    table = Table(
        title=f"Consent registry ({args.patients} patients' consents, "
        f"{args.requests} requests, real HTTP)"
    )
    table.add_column("measure")
    table.add_column("p50 / rate", justify="right")
    table.add_column("p99", justify="right")
    table.add_column("vs baseline", justify="right")
    table.add_row(
        "$decide (signed + ledger entry)",
        f"{result['decision_ms']['p50']:.2f} ms",
        f"{result['decision_ms']['p99']:.2f} ms",
        f"×{result['decision_vs_baseline_p50']:.2f} / ×{result['decision_vs_baseline_p99']:.2f}",
    )
    table.add_row(
        "baseline: authenticated one-row read",
        f"{result['baseline_read_ms']['p50']:.2f} ms",
        f"{result['baseline_read_ms']['p99']:.2f} ms",
        "1",
    )
    table.add_row(
        "envelope seal+open, 1 MB",
        f"{env['envelope_seal_open_mb_per_s']:.0f} MB/s",
        "",
        f"×{env['envelope_vs_raw_ratio']:.2f}",
    )
    table.add_row(
        "baseline: raw AES-256-GCM enc+dec, 1 MB",
        f"{env['raw_aes_gcm_mb_per_s']:.0f} MB/s",
        "",
        "1",
    )
    console.print(table)
    console.print(
        f"permitted share {result['decision_permit_share']:.0%}; ledger verifies: {ledger_ok}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
