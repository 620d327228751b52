"""Issue 18, must-show 4: released regional quality indicators against the exact pooled values.

Three synthetic sites (node.feeds' seeded generator: one tertiary hospital of 1,500 patients,
two community clinics of 2,500, as bench/export_synthetic_cohorts.py) with care records added
by a seeded bench generator (pathway CarePlans for 75 % of the patients with a pathway
condition, quarterly follow-up Tasks completed with a per-site probability, urgent alerts
acknowledged in time with a per-site probability); 90 % of the patients consent to HQUALIMP.
The exact pooled value is each indicator's numerator / denominator over the consented patients
of all three sites; a released value is what the authority publishes from the three nodes'
noisy counts (the same release and publication code as a run), repeated ``--reps`` times.

Two query designs, at each ε ∈ {0.5, 1, 3} per node:
  A. all nine indicators in one query — ε split over 18 counts (numerator and denominator each);
  B. one indicator per query at ε (2 counts) — nine such queries cost a node 9ε.
Reported per indicator: mean absolute error (percentage points for rates, days for the mean
length of stay), coverage of the stated 95 % interval, and the denominators.
Targets (the issue): coverage ≥ 0.9 of the nominal 0.95; error under 1 pp at ε = 1.

``--engine``: also the wall time of one analytics run (all nine, ε = 1) on the deployment
engine — SuperLink and three SuperNodes over TLS, real nodes and consent registry (the e2e
tests' network) — against the nodes' own work measured in the same run (reading a node's
consented patients over its FHIR API and counting them, in-process).

    .venv/bin/python bench/indicators.py [--reps 200] [--scale 1.0] [--engine] [--json F]

The noise here comes from ``random.Random(seed)`` (same exact sampler) so the bench repeats;
a node uses the OS CSPRNG.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from federated.indicators import (  # noqa: E402
    IndicatorQuery,
    Period,
    default_indicators,
    release,
    tally,
)
from federated.indicators.counting import PATHWAY_CONDITIONS, _has_condition  # noqa: E402
from federated.indicators.publish import region_figure  # noqa: E402
from federated.indicators.query import histograms, metric_key  # noqa: E402
from node.feeds.synthetic import generate_site  # noqa: E402

SITES = {
    "tertiary": ("tertiary", 1500, 11, 0.85, 0.90),  # profile, patients, seed, follow-up, ack
    "clinic-a": ("community", 2500, 12, 0.75, 0.80),
    "clinic-b": ("community", 2500, 13, 0.65, 0.70),
}
PERIOD = Period(datetime(2025, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC))
AS_OF = datetime(2026, 3, 1, tzinfo=UTC)
CARE = "https://ipjms.example.org/fhir"
CONSENT_RATE = 0.9
EPSILONS = (0.5, 1.0, 3.0)
DEFS = default_indicators()


def _care_records(pid: str, resources: list[dict[str, Any]], rng: random.Random,
                  follow_up_rate: float, ack_rate: float) -> list[dict[str, Any]]:  # fmt: skip
    """Pathway CarePlans, quarterly follow-up Tasks and urgent alerts for one patient."""
    out: list[dict[str, Any]] = []
    at = PERIOD.end - timedelta(days=1)
    for key, condition in PATHWAY_CONDITIONS.items():
        if not _has_condition(resources, condition, at) or rng.random() > 0.75:
            continue
        plan_id = f"{pid}-{key}"
        out.append({
            "resourceType": "CarePlan", "id": plan_id, "status": "active", "intent": "plan",
            "identifier": [{"system": f"{CARE}/sid/care-plan", "value": f"{key}/{pid}"}],
            "created": "2024-06-01T00:00:00Z",
        })  # fmt: skip
        for q in range(4):
            due = PERIOD.start + timedelta(days=80 + 90 * q + rng.randrange(10))
            done = rng.random() < follow_up_rate
            out.append({
                "resourceType": "Task", "id": f"{plan_id}-t{q}", "intent": "plan",
                "status": "completed" if done else "requested",
                "basedOn": [{"reference": f"CarePlan/{plan_id}"}],
                "restriction": {"period": {"end": due.isoformat()}},
            })  # fmt: skip
        for n in range(rng.choice((0, 0, 1, 2))):
            when = PERIOD.start + timedelta(days=rng.randrange(360), hours=rng.randrange(24))
            deadline = when + timedelta(hours=2)
            acked = when + timedelta(minutes=30 if rng.random() < ack_rate else 200)
            out.append({
                "resourceType": "DetectedIssue", "id": f"{plan_id}-a{n}", "status": "final",
                "severity": "high", "identifiedDateTime": when.isoformat(),
                "reference": f"{CARE}/PlanDefinition/{key}",
                "extension": [{"url": f"{CARE}/StructureDefinition/care-alert-acknowledge-by",
                               "valueDateTime": deadline.isoformat()}],
                "mitigation": [{"action": {"coding": [{
                    "system": f"{CARE}/CodeSystem/care-alert-action", "code": "acknowledged"}]},
                    "date": acked.isoformat()}],
            })  # fmt: skip
    return out


def site_patients(site: str, scale: float) -> list[list[dict[str, Any]]]:
    """The consented patients' resources of one site (care records added)."""
    profile, patients, seed, follow_up, ack = SITES[site]
    rng = random.Random(seed * 7919)
    out = []
    for i, bundle in enumerate(generate_site(profile, max(1, int(patients * scale)), seed)):
        resources = [e["resource"] for e in bundle["entry"]]
        resources += _care_records(f"{site}-{i}", resources, rng, follow_up, ack)
        if rng.random() < CONSENT_RATE:
            out.append(resources)
    return out


def evaluate(
    exact: dict[str, Any], query: IndicatorQuery, reps: int, seed: int
) -> dict[str, dict[str, float]]:
    """MAE and coverage of the region's 'all' figure of each indicator in ``query``."""
    rng = random.Random(seed)
    scales = {(h.indicator.id, h.side): float(h.scale) for h in histograms(query, DEFS)
              if h.dimension == "all"}  # fmt: skip
    stats: dict[str, dict[str, float]] = {
        i: {"abs_err": 0.0, "covered": 0, "released": 0} for i in query.indicators
    }
    for rep in range(reps):
        counts = {s: release(t, query, DEFS, rng) for s, t in exact.items()}
        for ind_id in query.indicators:
            ind = DEFS.get(ind_id)
            keys = [metric_key(ind_id, "all", "all", side) for side in ("num", "den")]
            parts = [c for c in counts.values() if keys[0] in c]
            if not parts:
                continue
            pooled = [sum(t.get(ind_id).numerator for t in exact.values()),
                      sum(t.get(ind_id).denominator for t in exact.values())]  # fmt: skip
            truth = pooled[0] / pooled[1]
            fig = region_figure(
                ind, sum(c[keys[0]] for c in parts), sum(c[keys[1]] for c in parts), len(parts),
                scales[(ind_id, "num")], scales[(ind_id, "den")], f"bench|{seed}|{rep}|{ind_id}",
            )  # fmt: skip
            st = stats[ind_id]
            st["released"] += 1
            value = fig["numerator"] / fig["denominator"]
            value = min(max(value, 0.0), 1.0 if ind.kind == "rate" else float(ind.value_cap))
            st["abs_err"] += abs(value - truth)
            st["covered"] += fig["ci95"][0] <= truth <= fig["ci95"][1]
    out = {}
    for ind_id, st in stats.items():
        n = max(st["released"], 1)
        unit = 100.0 if DEFS.get(ind_id).kind == "rate" else 1.0
        out[ind_id] = {"mae": unit * st["abs_err"] / n, "coverage": st["covered"] / n,
                       "released": st["released"]}  # fmt: skip
    return out


def engine_run(workdir: Path) -> dict[str, float]:
    """Wall time of one `ipjms fl indicators` on the deployment engine, and the nodes' own work."""
    import subprocess

    sys.path.insert(0, str(ROOT / "tests" / "federated"))
    from fl_net import NODES, grant_quality, start_fl_net

    from deploy.launcher import ipjms_command
    from federated.indicators.node_answer import load_patients

    t0 = time.monotonic()
    net = start_fl_net(workdir)
    try:
        setup = time.monotonic() - t0
        for org in NODES:
            for nid in net.national_ids[org][::2]:
                grant_quality(net, nid)
        out = workdir / "indicators.json"
        args = [
            "fl", "indicators", "--data-dir", str(net.superlink_dir), "--out", str(out),
            "--epsilon", "1", "--min-nodes", "3", "--min-count", "2", "--from", "2023-01-01",
        ]  # fmt: skip
        t1 = time.monotonic()
        proc = subprocess.run(ipjms_command(*args), capture_output=True, text=True, timeout=900)
        wall = time.monotonic() - t1
        if proc.returncode != 0:
            raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-2000:])
        local = 0.0
        for org in NODES:  # the nodes' own work: read consented patients over FHIR and count
            node = net.region.nodes[org]
            cfg = {
                "source": "fhir", "fhir-url": node.url, "client-id": "fl-supernode",
                "client-key": str(net.client_keys[org]), "consent-url": net.region.consent_url,
                "authority": "authority", "org-dir": str(net.pki.org_dirs[org]),
                "pseudonym-url": net.region.pseudonym_service.base_url,
            }  # fmt: skip
            t2 = time.monotonic()
            tally(load_patients(cfg), DEFS, DEFS.ids(), PERIOD, AS_OF)
            local = max(local, time.monotonic() - t2)
        doc = json.loads(out.read_text())
        return {"network_setup_seconds": setup, "analytics_run_wall_seconds": wall,
                "slowest_node_local_work_seconds": local,
                "ratio_wall_to_local": wall / local if local else float("nan"),
                "server_seconds": doc.get("seconds") or 0.0}  # fmt: skip
    finally:
        net.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of each site's patients")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--engine", action="store_true", help="also time the deployment engine")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "indicators.json")
    args = ap.parse_args()

    t0 = time.monotonic()
    exact = {}
    for site in SITES:
        patients = site_patients(site, args.scale)
        exact[site] = tally(patients, DEFS, DEFS.ids(), PERIOD, AS_OF)
        print(f"{site}: {len(patients)} consented patients", flush=True)
    print(f"cohorts and exact counts: {time.monotonic() - t0:.1f}s")
    pooled = {
        i: (sum(t.get(i).numerator for t in exact.values()),
            sum(t.get(i).denominator for t in exact.values()))
        for i in DEFS.ids()
    }  # fmt: skip
    result: dict[str, Any] = {
        "period": [PERIOD.start.isoformat(), PERIOD.end.isoformat()],
        "reps": args.reps,
        "pooled": {
            i: {"numerator": n, "denominator": d, "value": n / d if d else None}
            for i, (n, d) in pooled.items()
        },  # fmt: skip
        "designs": {},
    }
    for design in ("A", "B"):
        for eps in EPSILONS:
            t1 = time.monotonic()
            if design == "A":
                q = IndicatorQuery(DEFS.ids(), PERIOD, AS_OF, eps, run_label="bench")
                rows = evaluate(exact, q, args.reps, args.seed)
            else:
                rows = {}
                for i in DEFS.ids():
                    q = IndicatorQuery((i,), PERIOD, AS_OF, eps, run_label="bench")
                    rows.update(evaluate(exact, q, args.reps, args.seed))
            result["designs"][f"{design}@{eps:g}"] = rows
            print(f"design {design}, ε={eps:g}: {time.monotonic() - t1:.1f}s", flush=True)

    header = f"{'indicator':<28} {'exact pooled':>16}"
    for eps in EPSILONS:
        header += f" | A ε={eps:<3g} MAE  cov | B ε={eps:<3g} MAE  cov"
    print("\n" + header)
    for i in DEFS.ids():
        n, d = pooled[i]
        kind = DEFS.get(i).kind
        shown = f"{100 * n / d:.1f}% of {d}" if kind == "rate" else f"{n / d:.2f} d of {d}"
        line = f"{i:<28} {shown:>16}"
        for eps in EPSILONS:
            for design in ("A", "B"):
                r = result["designs"][f"{design}@{eps:g}"][i]
                unit = "pp" if kind == "rate" else "d "
                line += f" | {r['mae']:8.2f}{unit} {r['coverage']:.3f}"
        print(line)
    summary = {}
    for key, rows in result["designs"].items():
        rates = [r for i, r in rows.items() if DEFS.get(i).kind == "rate"]
        summary[key] = {
            "mean_mae_pp_rates": sum(r["mae"] for r in rates) / len(rates),
            "max_mae_pp_rates": max(r["mae"] for r in rates),
            "min_coverage": min(r["coverage"] for r in rows.values()),
            "mean_coverage": sum(r["coverage"] for r in rows.values()) / len(rows),
        }
    result["summary"] = summary
    print("\nsummary (rates only for MAE):")
    for key, s in summary.items():
        print(
            f"  {key:<6} mean MAE {s['mean_mae_pp_rates']:.2f} pp, "
            f"max {s['max_mae_pp_rates']:.2f} pp; "
            f"coverage min {s['min_coverage']:.3f}, mean {s['mean_coverage']:.3f}"
        )
    if args.engine:
        with tempfile.TemporaryDirectory(prefix="ipjms-bench-ind-") as tmp:
            result["engine"] = engine_run(Path(tmp))
        e = result["engine"]
        print(
            f"\ndeployment engine: one analytics run (9 indicators, ε=1, 3 SuperNodes over TLS) "
            f"{e['analytics_run_wall_seconds']:.1f}s wall (server side {e['server_seconds']:.1f}s);"
            f" slowest node's own read+count {e['slowest_node_local_work_seconds']:.2f}s → "
            f"×{e['ratio_wall_to_local']:.1f}"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.json} ({time.monotonic() - t0:.0f}s)")


if __name__ == "__main__":
    main()
