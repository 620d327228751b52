"""Must-show 6 of issue 4: referral latency through the coordinator vs a direct read, and
envelopes per second through one coordinator.

Run: ``.venv/bin/python bench/exchange.py [--referrals 30] [--resources 200] [--envelopes 300]``

Starts a real network on loopback (consent registry, coordinator with mutual TLS, hospital A,
clinic B — each its own ``ipjms … serve`` process, SQLite, fresh PKI) and a patient at A with
``--resources`` resources (all of consented classes), then measures in the same run:

1. **referral latency**: from the doctor's ``POST /exchange/requests`` at A ("send at A") to the
   moment B committed the import (``exchange_inbound.received_at`` at B) — consent check at A,
   collect + pack + seal, coordinator consent check, durable queue, streaming delivery, consent
   re-check, verify + decrypt + class check + import at B;
2. **baseline**: the same patient's data read directly from A's FHIR API
   (``GET /fhir/Patient/{id}/$everything`` with a doctor token) — the node API serves plain HTTP
   on loopback in this set-up, so the baseline has no TLS handshake cost;
3. **throughput**: ``--envelopes`` small sealed referral envelopes sent by A from 8 threads;
   accepted/s (durably queued) and delivered/s (imported and acknowledged by B).

Prints a table and writes ``bench/results/exchange.json``. p99 over 30 samples is close to the
maximum; raise ``--referrals`` for a steadier tail.
"""

from __future__ import annotations

import argparse
import json
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "exchange"))  # the exchange test network harness

from exchange_net import ORGS, patient_bundle, seed, start_region, wait_for  # noqa: E402

from node.exchange.client import ExchangeClient  # noqa: E402
from node.exchange.documents import pack_document  # noqa: E402
from trust.envelopes import EnvelopeHeader, seal_to  # noqa: E402
from trust.pki import init_ca, issue_org  # noqa: E402

NID = "BENCH-0001"
CLASSES = ["Patient", "Condition", "Observation", "MedicationStatement", "ServiceRequest"]


class _Pki:
    def __init__(self, root: Path) -> None:
        self.ca_dir = root / "ca"
        init_ca(self.ca_dir)
        self.org_dirs = {o: root / "orgs" / o for o in ORGS}
        self.creds = {o: issue_org(self.ca_dir, o, out_dir=d) for o, d in self.org_dirs.items()}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _received_at(db: Path, envelope_id: str) -> float | None:
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "select received_at from exchange_inbound where envelope_id = ?", (envelope_id,)
        ).fetchone()
    return float(row[0]) if row else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--referrals", type=int, default=30)
    parser.add_argument("--resources", type=int, default=200)
    parser.add_argument("--envelopes", type=int, default=300)
    ns = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory(prefix="ipjms-bench-exchange-") as tmp:
        root = Path(tmp)
        pki = _Pki(root / "pki")
        console.print("starting consent registry, coordinator and two nodes…")
        region = start_region(
            pki, root / "net", nodes=(("hosp-a", "tertiary"), ("clinic-b", "community"))
        )
        try:
            a, b = region.nodes["hosp-a"], region.nodes["clinic-b"]
            # Patient + HF condition, BNP, medication, procedure, allergy + extra observations
            seed(a, patient_bundle(NID, name="Bench Patient", extra_conditions=ns.resources - 6))
            pseudo = region.pseudonym(NID)
            region.grant(region.patient_token(pseudo), pseudo, {"clinic-b": CLASSES})
            db_b = b.data_dir / "node.db"
            everything_url = f"{a.url}/fhir/Patient/p-{NID}/$everything"

            def direct() -> tuple[float, int]:
                t0 = time.perf_counter()
                r = httpx.get(
                    everything_url, params={"_count": "1000"}, headers=a.headers(), timeout=60
                )
                r.raise_for_status()
                return time.perf_counter() - t0, len(r.json().get("entry", []))

            sent_times: list[float] = []
            broker_times: list[float] = []
            db_a = a.data_dir / "node.db"

            def referral() -> tuple[float, int]:
                t0 = time.time()
                r = a.post(
                    "/exchange/requests",
                    {
                        "kind": "referral",
                        "patient": f"Patient/p-{NID}",
                        "recipient": "clinic-b",
                        "reason": "bench",
                    },
                )
                sent_times.append(time.time() - t0)
                r.raise_for_status()
                body = r.json()
                env = body["envelope_id"]
                wait_for(lambda: _received_at(db_b, env) is not None, timeout=60, what="import")
                received = _received_at(db_b, env)
                assert received is not None
                with sqlite3.connect(db_a) as conn:
                    handed = conn.execute(
                        "select created_at from exchange_outbound where envelope_id = ?", (env,)
                    ).fetchone()[0]
                broker_times.append(received - float(handed))
                return received - t0, int(body["resources"])

            referral()  # warm-up (connections, caches); not counted
            direct()
            ref_times, direct_times, bundle_sizes, direct_sizes = [], [], [], []
            sent_times.clear()
            broker_times.clear()
            for _ in range(ns.referrals):  # interleaved so both see the same machine load
                seconds, size = referral()
                ref_times.append(seconds)
                bundle_sizes.append(size)
                seconds, size = direct()
                direct_times.append(seconds)
                direct_sizes.append(size)

            # throughput: many small envelopes from A's credentials, 8 sender threads
            creds = pki.creds["hosp-a"]
            document = json.dumps(
                pack_document(
                    [
                        {
                            "resourceType": "Condition",
                            "id": "c1",
                            "subject": {"reference": "Patient/p"},
                            "code": {"text": "bench"},
                        }
                    ],
                    patient=None,
                    sender="hosp-a",
                    title="bench",
                )
            ).encode()
            sealed = []
            for _ in range(ns.envelopes):
                header = EnvelopeHeader.new(
                    kind="referral",
                    sender="hosp-a",
                    recipient="clinic-b",
                    purpose="TREAT",
                    classes=("Condition",),
                    patient_pseudonym=pseudo,
                )
                recipient_cert = pki.creds["clinic-b"].encryption_cert_pem
                sealed.append(
                    seal_to(
                        header, document, sender=creds, recipient_encryption_cert_pem=recipient_cert
                    )
                )
            ids = {s.header.envelope_id for s in sealed}
            clients = [ExchangeClient(region.coordinator.address, creds) for _ in range(8)]
            t0 = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda i: clients[i % 8].send(sealed[i]), range(len(sealed))))
            accepted_s = time.perf_counter() - t0

            def delivered() -> bool:
                with sqlite3.connect(db_b) as conn:
                    done = {r[0] for r in conn.execute("select envelope_id from exchange_inbound")}
                return ids <= done

            wait_for(delivered, timeout=600, what="all envelopes delivered")
            delivered_s = time.perf_counter() - t0
            for c in clients:
                c.close()
        finally:
            region.stop()

    result = {
        "when": datetime.now(UTC).isoformat(),
        "machine": platform.platform(),
        "referrals": ns.referrals,
        "bundle_resources": statistics.median(bundle_sizes),
        "direct_read_resources": statistics.median(direct_sizes),
        "referral_latency_s": {"p50": _pct(ref_times, 0.5), "p99": _pct(ref_times, 0.99)},
        "direct_read_s": {"p50": _pct(direct_times, 0.5), "p99": _pct(direct_times, 0.99)},
        "send_at_a_returned_s": {"p50": _pct(sent_times, 0.5), "p99": _pct(sent_times, 0.99)},
        "sealed_at_a_to_imported_at_b_s": {
            "p50": _pct(broker_times, 0.5),
            "p99": _pct(broker_times, 0.99),
        },
        "broker_ratio_p50": _pct(broker_times, 0.5) / _pct(direct_times, 0.5),
        "broker_ratio_p99": _pct(broker_times, 0.99) / _pct(direct_times, 0.99),
        "ratio_p50": _pct(ref_times, 0.5) / _pct(direct_times, 0.5),
        "ratio_p99": _pct(ref_times, 0.99) / _pct(direct_times, 0.99),
        "target_ratio": 2.0,
        "throughput": {
            "envelopes": ns.envelopes,
            "accepted_per_s": ns.envelopes / accepted_s,
            "delivered_per_s": ns.envelopes / delivered_s,
        },
    }
    table = Table(title="Exchange: referral through the coordinator vs a direct read")
    table.add_column("measure")
    table.add_column("p50", justify="right")
    table.add_column("p99", justify="right")
    table.add_row(
        f"referral send@A → imported@B ({result['bundle_resources']:.0f} resources)",
        f"{result['referral_latency_s']['p50'] * 1000:.0f} ms",
        f"{result['referral_latency_s']['p99'] * 1000:.0f} ms",
    )
    table.add_row(
        "  of which: A's POST returned (consent, pack, seal, queued)",
        f"{result['send_at_a_returned_s']['p50'] * 1000:.0f} ms",
        f"{result['send_at_a_returned_s']['p99'] * 1000:.0f} ms",
    )
    table.add_row(
        "sealed envelope handed to the coordinator at A → imported at B",
        f"{result['sealed_at_a_to_imported_at_b_s']['p50'] * 1000:.0f} ms",
        f"{result['sealed_at_a_to_imported_at_b_s']['p99'] * 1000:.0f} ms",
    )
    table.add_row(
        f"direct read of A's $everything ({result['direct_read_resources']:.0f} entries)",
        f"{result['direct_read_s']['p50'] * 1000:.0f} ms",
        f"{result['direct_read_s']['p99'] * 1000:.0f} ms",
    )
    table.add_row(
        "ratio: whole referral / direct read (target ≤ 2×)",
        f"{result['ratio_p50']:.1f}×",
        f"{result['ratio_p99']:.1f}×",
    )
    table.add_row(
        "ratio: broker leg (handed over → imported) / direct read",
        f"{result['broker_ratio_p50']:.1f}×",
        f"{result['broker_ratio_p99']:.1f}×",
    )
    console.print(table)
    console.print(
        f"throughput through one coordinator: {result['throughput']['accepted_per_s']:.0f} "
        f"envelopes/s accepted, {result['throughput']['delivered_per_s']:.0f} envelopes/s "
        f"delivered+imported ({ns.envelopes} envelopes, 8 sender threads)"
    )
    out = ROOT / "bench" / "results" / "exchange.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    console.print(f"written {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
