"""Must-show 5 of issue 6: envelopes/s through ONE coordinator on PostgreSQL and through TWO
coordinators sharing one PostgreSQL queue — same run, same load.

Run: ``IPJMS_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/test \\
      .venv/bin/python bench/coordinator_scale.py [--senders 4] [--per-sender 150] [--rounds 2]``

Real processes on loopback (tests/ops/coordinator_load.py): a consent registry on its own
PostgreSQL database; ``ipjms coordinator serve`` replicas (gRPC, mutual TLS) on ONE shared
PostgreSQL queue database (fresh for each measurement); ``--senders`` sender organisations
(separate processes, 4 threads each, spread over the replicas) and two recipient organisations
that each keep an Inbox stream on every replica, verify + decrypt every envelope and acknowledge
it. Every Send is consent-checked by the coordinator against the registry, and again at delivery
— as in production. The envelopes are sealed before the clock starts, each after its sender
asked the registry for a decision bound to its envelope id (what a node does before sealing), so
each coordinator check is one ``$recheck`` by envelope id; ``--unbound`` seals them with no
decision, as this bench did before issue 19 (each check then a 404 ``$recheck`` and a
``$decide``: two registry round trips).

Measured per configuration: accepted/s (all Sends returned: durably queued) and delivered/s
(every envelope acknowledged by its recipient), and CPU seconds per 1000 envelopes spent in the
coordinator process(es), the consent registry and PostgreSQL (from /proc) — what limits one
coordinator. Configurations alternate (1, 2, 1, 2, …) for ``--rounds`` so both see the same
machine; the best round of each is reported next to the median.

Prints a table and writes ``bench/results/coordinator_scale.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "ops"))  # the coordinator load harness

from coordinator_load import LoadRegion, create_database, drop_database  # noqa: E402

_TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> float:
    """User + system CPU seconds of one process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def _postgres_cpu() -> float:
    """CPU seconds of every PostgreSQL server process on this machine (backends included)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    total += _proc_cpu(int(entry.name))
            except OSError:
                continue
    return total


def _machine_busy() -> float:
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / _TICK


def measure(
    region: LoadRegion, server: str, replicas: int, per_sender: int, *, bound: bool = True
) -> dict[str, Any]:
    db = create_database(server, f"ipjms_bench_queue_{uuid.uuid4().hex[:10]}")
    try:
        coordinators = region.start_coordinators(
            replicas, db, f"c{replicas}-{uuid.uuid4().hex[:6]}"
        )
        consent_pid = region.services[0].process.pid
        samples: dict[str, float] = {}

        def sample(tag: str) -> None:
            samples[f"{tag}_coord"] = sum(_proc_cpu(c.process.pid) for c in coordinators)
            samples[f"{tag}_consent"] = _proc_cpu(consent_pid)
            samples[f"{tag}_pg"] = _postgres_cpu()
            samples[f"{tag}_machine"] = _machine_busy()

        try:
            result = region.run_load(
                coordinators,
                db,
                per_sender=per_sender,
                on_go=lambda: sample("go"),
                on_done=lambda: sample("done"),
                bound=bound,
            )
        finally:
            for c in coordinators:
                c.stop()
                region.services.remove(c)
    finally:
        drop_database(server, db)
    delivered = [d[0] for d in result.deliveries]
    if result.sender_errors or len(set(delivered)) != result.envelopes:
        raise RuntimeError(
            f"load run incomplete: {len(result.sender_errors)} send errors, "
            f"{len(set(delivered))}/{result.envelopes} delivered"
        )
    per_k = 1000 / result.envelopes

    def cpu(part: str) -> float:
        return (samples[f"done_{part}"] - samples[f"go_{part}"]) * per_k

    return {
        "coordinators": replicas,
        "envelopes": result.envelopes,
        "duplicates_delivered": len(delivered) - len(set(delivered)),
        "accepted_per_s": result.accepted_per_s,
        "delivered_per_s": result.delivered_per_s,
        "cpu_s_per_1000": {
            "coordinators": cpu("coord"),
            "consent_registry": cpu("consent"),
            "postgresql": cpu("pg"),
            "load_clients": result.client_cpu_s * per_k,
            "machine_total": cpu("machine"),
        },
        "wall_s": result.last_delivered - result.go,
        "load_average_after": os.getloadavg(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--per-sender", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--unbound", action="store_true", help="seal without a decision bound to the envelope"
    )
    ns = parser.parse_args()
    bound = not ns.unbound
    server = os.environ.get("IPJMS_TEST_POSTGRES_URL")
    if not server:
        print("set IPJMS_TEST_POSTGRES_URL=postgresql://USER@HOST:PORT/DB (a server to create "
              "databases on)", file=sys.stderr)  # fmt: skip
        return 2
    console = Console(width=150)
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    consent_db = create_database(server, f"ipjms_bench_consent_{uuid.uuid4().hex[:10]}")
    try:
        with tempfile.TemporaryDirectory(prefix="ipjms-bench-coord-") as tmp:
            region = LoadRegion(Path(tmp), consent_db, senders=ns.senders, recipients=2)
            try:
                region.start()
                # warm-up: connections, caches, the registry's first decisions (not reported)
                measure(region, server, 1, 10, bound=bound)
                for r in range(ns.rounds):
                    for replicas in (1, 2):
                        run = measure(region, server, replicas, ns.per_sender, bound=bound)
                        runs[replicas].append(run)
                        console.print(
                            f"round {r + 1}, {replicas} coordinator(s): "
                            f"{run['delivered_per_s']:.0f} envelopes/s delivered, "
                            f"{run['cpu_s_per_1000']['coordinators']:.1f} ms CPU per envelope "
                            f"in the coordinator(s), load average "
                            f"{run['load_average_after'][0]:.1f}"
                        )
            finally:
                region.stop()
    finally:
        drop_database(server, consent_db)

    def summary(replicas: int) -> dict[str, Any]:
        rs = runs[replicas]
        best = max(rs, key=lambda x: x["delivered_per_s"])
        return {
            "runs": rs,
            "delivered_per_s_median": statistics.median(x["delivered_per_s"] for x in rs),
            "delivered_per_s_best": best["delivered_per_s"],
            "accepted_per_s_median": statistics.median(x["accepted_per_s"] for x in rs),
            "cpu_s_per_1000_median": {
                k: statistics.median(x["cpu_s_per_1000"][k] for x in rs)
                for k in best["cpu_s_per_1000"]
            },
        }

    one, two = summary(1), summary(2)
    result = {
        "when": datetime.now(UTC).isoformat(),
        "machine": platform.platform(),
        "cpu_cores": os.cpu_count(),
        "load_average_end": os.getloadavg(),
        "decisions_bound_to_envelopes": bound,
        "senders": ns.senders,
        "sender_threads": 4,
        "recipients": 2,
        "envelopes_per_run": ns.senders * ns.per_sender,
        "one_coordinator": one,
        "two_coordinators": two,
        "ratio_two_over_one_median": two["delivered_per_s_median"] / one["delivered_per_s_median"],
    }
    table = Table(
        title=f"Envelopes through coordinators on PostgreSQL ({os.cpu_count()} cores)",
        caption="CPU ms per envelope; 'whole machine' includes other processes on the host",
    )
    table.add_column("replicas")
    table.add_column("accepted/s (median)", justify="right")
    table.add_column("delivered/s (median)", justify="right")
    table.add_column("delivered/s (best)", justify="right")
    table.add_column("coordinator(s)", justify="right")
    table.add_column("consent registry", justify="right")
    table.add_column("PostgreSQL", justify="right")
    table.add_column("load clients", justify="right")
    table.add_column("whole machine", justify="right")
    for label, s in (("1", one), ("2 (shared queue)", two)):
        c = s["cpu_s_per_1000_median"]
        table.add_row(
            label,
            f"{s['accepted_per_s_median']:.0f}",
            f"{s['delivered_per_s_median']:.0f}",
            f"{s['delivered_per_s_best']:.0f}",
            f"{c['coordinators']:.1f}",
            f"{c['consent_registry']:.1f}",
            f"{c['postgresql']:.1f}",
            f"{c['load_clients']:.1f}",
            f"{c['machine_total']:.1f}",
        )
    console.print(table)
    console.print(f"two / one (median delivered/s): {result['ratio_two_over_one_median']:.2f}×")
    console.print(
        "decisions bound to envelope ids: "
        f"{'yes (one $recheck per check)' if bound else 'no (--unbound)'}; load average at the "
        f"end {result['load_average_end'][0]:.1f} / {result['load_average_end'][1]:.1f} / "
        f"{result['load_average_end'][2]:.1f}"
    )
    out = ROOT / "bench" / "results" / "coordinator_scale.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    console.print(f"written {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
