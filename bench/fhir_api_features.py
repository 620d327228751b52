"""Issue 17 must-show 5: ``_revinclude`` and chained searches at ~100k resources, p95 next to the
equivalent two-request form in the same run, and Bulk ``$export`` throughput.

Run: ``.venv/bin/python bench/fhir_api_features.py [--patients 1000] [--queries 200] [--pg URL]``

In-process, through the node's store API (``FhirStore.search`` — the path every FHIR search
and every export page takes; no HTTP, so the numbers are the server-side cost):

1. ``--patients`` patients (identifier ``urn:bench|i``), each with 100 Observations over 10
   LOINC codes: 101 resources per patient (101,000 for the default), loaded in transactions.
2. ``Patient?_id=X&_revinclude=Observation:subject`` vs the two requests a client makes without
   it (``Patient?_id=X``, then ``Observation?subject=Patient/X&_count=1000``).
3. ``Observation?subject:Patient.identifier=urn:bench|i&code=…`` vs the two requests
   (``Patient?identifier=urn:bench|i``, then ``Observation?subject=Patient/<id>&code=…``).
4. ``$export`` of every Patient and Observation (``run_export``: paged searches, NDJSON files):
   resources/s; **baseline, same run:** the same bodies read straight from the version table
   and written as NDJSON (no search, no paging).

Prints a table and writes ``bench/results/fhir_api_features.json``.
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
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node.api.bulk_export import ExportJob, ExportJobs, run_export  # noqa: E402
from node.store import FhirStore, migrate  # noqa: E402
from node.store.tables import resource as res  # noqa: E402
from node.store.tables import resource_version  # noqa: E402
from servicekit.storage import make_engine  # noqa: E402

CODES = [
    "8867-4",
    "8480-6",
    "8462-4",
    "9279-1",
    "8310-5",
    "2708-6",
    "29463-7",
    "8302-2",
    "39156-5",
    "2339-0",
]
VALUES = {
    "8867-4": 70,
    "8480-6": 120,
    "8462-4": 80,
    "9279-1": 16,
    "8310-5": 37.0,
    "2708-6": 97,
    "29463-7": 70,
    "8302-2": 170,
    "39156-5": 24,
    "2339-0": 100,
}
UNITS = {
    "8867-4": "/min",
    "8480-6": "mm[Hg]",
    "8462-4": "mm[Hg]",
    "9279-1": "/min",
    "8310-5": "Cel",
    "2708-6": "%",
    "29463-7": "kg",
    "8302-2": "cm",
    "39156-5": "kg/m2",
    "2339-0": "mg/dL",
}


def _bundle(i: int) -> dict[str, Any]:
    pid = f"urn:uuid:p-{i}"
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": pid,
            "request": {"method": "POST", "url": "Patient"},
            "resource": {
                "resourceType": "Patient",
                "gender": "female",
                "identifier": [{"system": "urn:bench", "value": str(i)}],
                "name": [{"family": f"Bench{i}"}],
            },
        }
    ]
    for n in range(100):
        code = CODES[n % 10]
        entries.append(
            {
                "request": {"method": "POST", "url": "Observation"},
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                    "subject": {"reference": pid},
                    "effectiveDateTime": f"2024-{1 + n % 12:02d}-{1 + n % 28:02d}T08:00:00Z",
                    "valueQuantity": {
                        "value": VALUES[code],
                        "unit": UNITS[code],
                        "system": "http://unitsofmeasure.org",
                        "code": UNITS[code],
                    },
                },
            }
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def load(store: FhirStore, patients: int, console: Console) -> tuple[list[str], float]:
    start = time.perf_counter()
    ids: list[str] = []
    for i in range(patients):
        answer = store.transaction(_bundle(i), writer="bench:load")
        ids.append(answer["entry"][0]["response"]["location"].split("/")[1])
        if (i + 1) % 100 == 0:
            console.print(f"  loaded {i + 1} patients ({(i + 1) * 101} resources)")
    return ids, time.perf_counter() - start


def _p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def timed(fn: Any, runs: int) -> dict[str, float]:
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return {
        "p50_ms": _p(samples, 0.5),
        "p95_ms": _p(samples, 0.95),
        "mean_ms": statistics.mean(samples) * 1000,
    }


def measure(store: FhirStore, ids: list[str], queries: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    picks = [(rng.randrange(len(ids)), rng.choice(CODES)) for _ in range(queries)]
    it = iter(picks * 2)

    def revinclude() -> None:
        i, _ = next(it)
        r = store.search("Patient", [("_id", ids[i]), ("_revinclude", "Observation:subject")])
        assert len(r.included) == 100

    def two_requests_rev() -> None:
        i, _ = next(it)
        store.search("Patient", [("_id", ids[i])])
        r = store.search("Observation", [("subject", f"Patient/{ids[i]}"), ("_count", "1000")])
        assert len(r.resources) == 100

    def chain() -> None:
        i, code = next(it)
        r = store.search(
            "Observation",
            [
                ("subject:Patient.identifier", f"urn:bench|{i}"),
                ("code", f"http://loinc.org|{code}"),
            ],
        )
        assert r.total == 10

    def two_requests_chain() -> None:
        i, code = next(it)
        p = store.search("Patient", [("identifier", f"urn:bench|{i}")])
        r = store.search(
            "Observation",
            [("subject", f"Patient/{p.resources[0]['id']}"), ("code", f"http://loinc.org|{code}")],
        )
        assert r.total == 10

    out = {}
    for name, fn in (
        ("revinclude", revinclude),
        ("revinclude_two_requests", two_requests_rev),
        ("chain", chain),
        ("chain_two_requests", two_requests_chain),
    ):
        it = iter(picks)
        timed(fn, min(20, queries))  # warm-up
        it = iter(picks)
        out[name] = timed(fn, queries)
    return out


def measure_export(store: FhirStore, engine: Any, workdir: Path) -> dict[str, float]:
    jobs = ExportJobs(workdir / "exports")
    job = ExportJob.new(
        "bench:export", "system", "bench", {"Patient": None, "Observation": None}, None
    )
    start = time.perf_counter()
    done = run_export(store, jobs, job)
    elapsed = time.perf_counter() - start
    exported = sum(o["count"] for o in done.output)
    # baseline: the same current bodies straight from the table into one NDJSON file
    start = time.perf_counter()
    n = 0
    with engine.connect() as conn, open(workdir / "baseline.ndjson", "w") as out:
        stmt = (
            resource_version.select()
            .with_only_columns(resource_version.c.body)
            .join(
                res,
                (res.c.resource_type == resource_version.c.resource_type)
                & (res.c.resource_id == resource_version.c.resource_id)
                & (res.c.version_id == resource_version.c.version_id),
            )
            .where(res.c.deleted.is_(False))
        )
        for (body,) in conn.execution_options(stream_results=True).execute(stmt):
            out.write(json.dumps(body, separators=(",", ":")) + "\n")
            n += 1
    baseline = time.perf_counter() - start
    return {
        "resources": exported,
        "seconds": elapsed,
        "resources_per_s": exported / elapsed,
        "baseline_resources": n,
        "baseline_seconds": baseline,
        "baseline_resources_per_s": n / baseline,
    }


def run(kind: str, url: str, args: argparse.Namespace, console: Console) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        engine = make_engine(url or f"sqlite:///{workdir / 'bench.db'}")
        migrate(engine)
        store = FhirStore(engine, base_url="http://bench/fhir")
        store.warm_up()
        console.print(f"[bold]{kind}[/]: loading {args.patients * 101} resources")
        ids, seconds = load(store, args.patients, console)
        result: dict[str, Any] = {
            "database": kind,
            "resources": args.patients * 101,
            "load_resources_per_s": args.patients * 101 / seconds,
        }
        result["search"] = measure(store, ids, args.queries, args.seed)
        result["export"] = measure_export(store, engine, workdir)
        engine.dispose()
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--pg", default="")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "fhir_api_features.json"
    )
    args = parser.parse_args()
    console = Console()
    results = [run("sqlite", "", args, console)]
    if args.pg:
        results.append(run("postgresql", args.pg, args, console))
    table = Table(title="FHIR API features at ~100k resources (in-process store)")
    for col in ("database", "query", "p50 ms", "p95 ms", "two-request p95 ms", "ratio p95"):
        table.add_column(col)
    for r in results:
        s = r["search"]
        for name in ("revinclude", "chain"):
            one, two = s[name], s[f"{name}_two_requests"]
            table.add_row(
                r["database"],
                name,
                f"{one['p50_ms']:.1f}",
                f"{one['p95_ms']:.1f}",
                f"{two['p95_ms']:.1f}",
                f"{one['p95_ms'] / two['p95_ms']:.2f}",
            )
        e = r["export"]
        table.add_row(
            r["database"],
            f"$export {e['resources']} res",
            f"{e['resources_per_s']:.0f} res/s",
            "",
            f"baseline {e['baseline_resources_per_s']:.0f} res/s",
            f"{e['resources_per_s'] / e['baseline_resources_per_s']:.2f}",
        )
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": platform.platform(),
                "args": vars(args) | {"out": str(args.out)},
                "results": results,
            },
            indent=2,
        )
    )
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
