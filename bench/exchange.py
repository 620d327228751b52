"""Must-show 6 of issue 4: referral latency through the coordinator vs a direct read, and
envelopes per second through one coordinator.

Run: ``.venv/bin/python bench/exchange.py [--referrals 30] [--resources 200] [--envelopes 300]``

Starts a real network on loopback (consent registry, coordinator with mutual TLS, hospital A,
clinic B — each its own ``ipjms … serve`` process, SQLite, fresh PKI), then measures in the same
run, for ``--referrals`` patients each seeded at A with ``--resources`` resources (all of consented
classes) so that every referral brings B a bundle it has never seen:

1. **referral latency**: from the doctor's ``POST /exchange/requests`` at A ("send at A") to the
   moment the coordinator recorded B's acknowledgement, which B sends only after its import is
   durably committed (``envelopes.updated_at`` of the delivered envelope; B's own
   ``exchange_inbound.received_at`` is written inside the import transaction, before its
   commit, so it would leave the commit out) — consent check at A, collect + pack + seal,
   coordinator consent check, durable queue, streaming delivery, consent re-check, verify +
   decrypt + class check + validation + import + commit at B, acknowledgement;
2. **baseline**: the same patient's data read directly from A's FHIR API over HTTPS
   (``GET /fhir/Patient/{id}/$everything`` with a doctor token; A's API served by ``ipjms node
   serve --tls-cert/--tls-key`` with A's regional TLS certificate, verified against the regional
   CA) — once on a new connection per read (TCP + TLS handshake, as a one-off read from another
   organisation would be) and once on a kept-alive connection; both ratios are printed;
3. **direct copy without the broker** (a second baseline): the same patient's ``$everything``
   read from A over HTTPS (new connection) and written into B's FHIR API as one transaction
   Bundle (``POST /fhir``; B validates, indexes and durably commits it as it does an import).
   The referral's ratio to this is what the broker itself adds — consent checks, sealing, the
   durable queue, the hops — over moving the same records from A's store into B's;
4. **where the time goes**: the mean of each step of sending at A and importing at B over the
   measured referrals, from the nodes' ``ipjms_node_exchange_phase_seconds`` histograms (their
   ``/metrics``, read before and after), with what no step covers — at A, the mean of A's POST
   less A's steps (HTTP, token check, reading the Patient); from the outbox row to B's
   acknowledgement, the mean of that span less A's outbox, coordinator and outbox_sent steps and
   B's steps (the coordinator's delivery: wake, claim, consent epoch, audit; the gRPC hops) —
   and the part no broker can avoid: A reading the records (the work of the direct read) and B
   validating, writing and committing them;
5. **throughput**: ``--envelopes`` small sealed referral envelopes sent by A from 8 threads,
   each sealed after A's credentials asked the registry for a decision bound to its envelope id
   (what a node does; untimed), so the coordinator rechecks by envelope id as for a referral;
   accepted/s (durably queued) and delivered/s (acknowledged by B — B's outcomes are counted:
   these hand-made documents carry no decision token, so B refuses them after opening them),
   and the CPU milliseconds per envelope of the coordinator, the consent registry and B over
   that phase (from /proc: the machine is shared, so wall rates move with its load; the load
   average is printed with the figures).

Prints a table and writes ``bench/results/exchange.json``. p99 over 30 samples is close to the
maximum; raise ``--referrals`` for a steadier tail.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "exchange"))  # the exchange test network harness

from exchange_net import (  # noqa: E402
    ORGS,
    REGISTRY_ORG,
    patient_bundle,
    seed,
    start_region,
    wait_for,
)

from deploy.launcher import free_port, start_service, wait_healthy  # noqa: E402
from node.exchange.client import ExchangeClient  # noqa: E402
from node.exchange.documents import pack_document  # noqa: E402
from trust.envelopes import EnvelopeHeader, seal_to  # noqa: E402
from trust.pki import init_ca, issue_org  # noqa: E402

CLASSES = ["Patient", "Condition", "Observation", "MedicationStatement", "ServiceRequest"]


class _Pki:
    def __init__(self, root: Path) -> None:
        self.ca_dir = root / "ca"
        init_ca(self.ca_dir)
        self.org_dirs = {o: root / "orgs" / o for o in [*ORGS, REGISTRY_ORG]}
        self.creds = {o: issue_org(self.ca_dir, o, out_dir=d) for o, d in self.org_dirs.items()}


_TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> float:
    """User + system CPU seconds of one process (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _acknowledged_at(coordinator_db: Path, envelope_id: str) -> float | None:
    """When the coordinator recorded B's acknowledgement of a successful import (B acknowledges
    after its import transaction committed)."""
    with sqlite3.connect(coordinator_db) as conn:
        row = conn.execute(
            "select state, updated_at from envelopes where envelope_id = ?", (envelope_id,)
        ).fetchone()
    if row is None or row[0] not in ("delivered", "rejected"):
        return None
    if row[0] != "delivered":
        raise RuntimeError(f"envelope {envelope_id} was rejected by the recipient")
    return float(row[1])


def _copy_transaction(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """A transaction Bundle writing ``resources`` under new ids ("copy-…"), references among
    them following; a resource referring outside the set (e.g. the referral's Task) is left out."""
    new_id = {f"{r['resourceType']}/{r['id']}": f"copy-{r['id']}"[:64] for r in resources}

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("reference")
            if isinstance(ref, str):
                if ref not in new_id:
                    raise KeyError(ref)
                return {**node, "reference": f"{ref.split('/')[0]}/{new_id[ref]}"}
            return {k: rewrite(v) for k, v in node.items() if k != "meta"}
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        return node

    entries = []
    for res in resources:
        try:
            body = rewrite(res)
        except KeyError:
            continue
        body["id"] = new_id[f"{res['resourceType']}/{res['id']}"]
        url = f"{res['resourceType']}/{body['id']}"
        entries.append({"resource": body, "request": {"method": "PUT", "url": url}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


PHASE_METRIC = "ipjms_node_exchange_phase_seconds"
OUT_PHASES = (
    "pseudonym", "collect", "consent_wait", "routing", "pack_seal", "workflow_write", "outbox",
    "coordinator", "outbox_sent",
)  # fmt: skip
IN_PHASES = (
    "open", "parse", "routing", "proof", "link", "prepare", "validate", "write", "commit", "ack",
)  # fmt: skip


def _phase_totals(node: Any, direction: str) -> dict[str, tuple[float, float]]:
    """phase → (sum of seconds, count) from a node's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{node.url}/metrics", timeout=30).text
    out: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != PHASE_METRIC:
            continue
        for sample in family.samples:
            if sample.labels.get("direction") != direction:
                continue
            slot = out.setdefault(sample.labels["phase"], [0.0, 0.0])
            if sample.name.endswith("_sum"):
                slot[0] = sample.value
            elif sample.name.endswith("_count"):
                slot[1] = sample.value
    return {phase: (v[0], v[1]) for phase, v in out.items()}


def _phase_means(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, float]:
    """Mean seconds per phase between two readings."""
    means = {}
    for phase, (total, count) in after.items():
        total0, count0 = before.get(phase, (0.0, 0.0))
        if count > count0:
            means[phase] = (total - total0) / (count - count0)
    return means


_PSEUDONYM_ENV = ("IPJMS_NODE_PSEUDONYM_URL", "IPJMS_NODE_ORG_CREDENTIALS_DIR", "IPJMS_NODE_CA_DIR")


def _start_https_api(node: Any, pki: _Pki, log_dir: Path) -> Any:
    org_dir = pki.org_dirs[node.org_id]
    port = free_port()
    service = start_service(
        f"{node.org_id}-https-api",
        ["node", "serve", "--data-dir", str(node.data_dir), "--port", str(port),
         "--tls-cert", str(org_dir / "tls.cert.pem"), "--tls-key", str(org_dir / "tls.key.pem")],
        base_url=f"https://127.0.0.1:{port}",
        log_dir=log_dir,
        wait=False,
        # the same pseudonym source as the node (the authority's OPRF, asked as A), no exchange
        env={k: v for k, v in node.env.items() if k in _PSEUDONYM_ENV},
    )  # fmt: skip
    try:
        wait_healthy(service, verify=str(pki.ca_dir / "ca.cert.pem"))
    except Exception:
        service.stop()
        raise
    return service


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
        https_api = None
        try:
            a, b = region.nodes["hosp-a"], region.nodes["clinic-b"]
            db_a, db_b = a.data_dir / "node.db", b.data_dir / "node.db"
            db_coordinator = region.coordinator.data_dir / "coordinator.db"
            # A's FHIR API over HTTPS with A's regional TLS certificate: a second API process
            # on A's data (no exchange runner: it is given no coordinator) for the baseline.
            https_api = _start_https_api(a, pki, root / "net" / "logs")
            ca_ssl = httpx.create_ssl_context(verify=str(pki.ca_dir / "ca.cert.pem"))
            keepalive = httpx.Client(verify=ca_ssl, headers=a.headers(), timeout=60)
            # The doctors' sessions at A (referrals) and B (the direct copy's write): one client
            # each, so no sample pays for building an HTTP client (loading a CA bundle ≈ 20 ms).
            doctor_a = httpx.Client(base_url=a.url, headers=a.headers(), timeout=60)
            doctor_b = httpx.Client(base_url=b.url, headers=b.headers(), timeout=60)
            patients = iter(range(10_000))

            def new_patient() -> str:
                """A patient of ``--resources`` resources at A, consenting to B: each referral
                carries a bundle B has never seen, so B imports it for the first time."""
                nid = f"BENCH-{next(patients):04d}"
                bundle = patient_bundle(
                    nid, name="Bench Patient", extra_conditions=ns.resources - 6
                )
                seed(a, bundle)
                pseudo = region.pseudonym(nid)
                region.grant(region.patient_token(pseudo), pseudo, {"clinic-b": CLASSES})
                return f"p-{nid}"

            def direct(pid: str, client: httpx.Client | None) -> tuple[float, int]:
                """$everything over HTTPS: a new connection (TCP + TLS handshake) per read when
                ``client`` is None, else the kept-alive connection of ``client``."""
                url = f"{https_api.base_url}/fhir/Patient/{pid}/$everything"
                params = {"_count": "1000"}
                t0 = time.perf_counter()
                if client is None:
                    r = httpx.get(
                        url, params=params, headers=a.headers(), verify=ca_ssl, timeout=60
                    )
                else:
                    r = client.get(url, params=params)
                r.raise_for_status()
                return time.perf_counter() - t0, len(r.json().get("entry", []))

            def direct_copy(pid: str) -> tuple[float, int]:
                """$everything from A (HTTPS, new connection), then the same resources as one
                transaction into B's FHIR API: the records moved without the broker."""
                url = f"{https_api.base_url}/fhir/Patient/{pid}/$everything"
                t0 = time.perf_counter()
                r = httpx.get(
                    url, params={"_count": "1000"}, headers=a.headers(), verify=ca_ssl, timeout=60
                )
                r.raise_for_status()
                tx = _copy_transaction([e["resource"] for e in r.json().get("entry", [])])
                w = doctor_b.post(
                    "/fhir", json=tx, headers={"Content-Type": "application/fhir+json"}
                )
                if w.status_code != 200:
                    raise RuntimeError(f"direct copy into B failed: {w.status_code} {w.text[:300]}")
                return time.perf_counter() - t0, len(tx["entry"])

            sent_times: list[float] = []
            broker_times: list[float] = []

            def referral(pid: str) -> tuple[float, int]:
                t0 = time.time()
                r = doctor_a.post(
                    "/exchange/requests",
                    json={"kind": "referral", "patient": f"Patient/{pid}",
                          "recipient": "clinic-b", "reason": "bench"},
                )  # fmt: skip
                sent_times.append(time.time() - t0)
                r.raise_for_status()
                body = r.json()
                env = body["envelope_id"]
                wait_for(
                    lambda: _acknowledged_at(db_coordinator, env) is not None,
                    timeout=60,
                    what="import acknowledged",
                )
                received = _acknowledged_at(db_coordinator, env)
                assert received is not None
                with sqlite3.connect(db_a) as conn:
                    handed = conn.execute(
                        "select created_at from exchange_outbound where envelope_id = ?", (env,)
                    ).fetchone()[0]
                broker_times.append(received - float(handed))
                return received - t0, int(body["resources"])

            warm = new_patient()  # warm-up (connections, caches); not counted
            referral(warm)
            direct(warm, None)
            direct(warm, keepalive)
            direct_copy(warm)
            ref_times, fresh_times, kept_times, bundle_sizes, direct_sizes = [], [], [], [], []
            copy_times: list[float] = []
            copy_sizes: list[int] = []
            sent_times.clear()
            broker_times.clear()
            phases_before = (_phase_totals(a, "out"), _phase_totals(b, "in"))
            console.print(f"{ns.referrals} referrals, each of a new patient, and direct reads…")
            for _ in range(ns.referrals):  # interleaved so both see the same machine load
                pid = new_patient()
                seconds, size = referral(pid)
                ref_times.append(seconds)
                bundle_sizes.append(size)
                seconds, size = direct(pid, None)
                fresh_times.append(seconds)
                direct_sizes.append(size)
                kept_times.append(direct(pid, keepalive)[0])
                seconds, size = direct_copy(pid)
                copy_times.append(seconds)
                copy_sizes.append(size)
            for client in (keepalive, doctor_a, doctor_b):
                client.close()
            load_referrals = os.getloadavg()
            out_means = _phase_means(phases_before[0], _phase_totals(a, "out"))
            in_means = _phase_means(phases_before[1], _phase_totals(b, "in"))

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
            headers = [
                EnvelopeHeader.new(
                    kind="referral",
                    sender="hosp-a",
                    recipient="clinic-b",
                    patient_pseudonym=region.pseudonym("BENCH-0000"),
                )
                for _ in range(ns.envelopes)
            ]
            with region.consent_client("hosp-a") as registry:  # as a node does before sealing

                def bind(h: EnvelopeHeader) -> None:
                    registry.decide(
                        region.pseudonym("BENCH-0000"),
                        h.recipient,
                        "TREAT",
                        ["Condition"],
                        envelope_id=h.envelope_id,
                    )

                with ThreadPoolExecutor(4) as pool:
                    list(pool.map(bind, headers))
            recipient_cert = pki.creds["clinic-b"].encryption_cert_pem
            sealed = [
                seal_to(h, document, sender=creds, recipient_encryption_cert_pem=recipient_cert)
                for h in headers
            ]
            ids = {s.header.envelope_id for s in sealed}
            clients = [ExchangeClient(region.coordinator.address, creds) for _ in range(8)]
            pids = {
                "coordinator": region.coordinator.service.process.pid,
                "consent_registry": region.consent_service.process.pid,
                "node_b": b.service.process.pid,
                "node_a": a.service.process.pid,
            }
            cpu0 = {k: _proc_cpu(pid) for k, pid in pids.items()}
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
            cpu_ms = {
                k: (_proc_cpu(pid) - cpu0[k]) * 1000 / ns.envelopes for k, pid in pids.items()
            }
            load_after = os.getloadavg()
            with sqlite3.connect(db_b) as conn:
                outcomes: dict[str, int] = {}
                for envelope_id, outcome in conn.execute(
                    "select envelope_id, outcome from exchange_inbound"
                ):
                    if envelope_id in ids:
                        outcomes[outcome] = outcomes.get(outcome, 0) + 1
            for c in clients:
                c.close()
        finally:
            if https_api is not None:
                https_api.stop()
            region.stop()

    def pct(values: list[float]) -> dict[str, float]:
        return {"p50": _pct(values, 0.5), "p99": _pct(values, 0.99)}

    referral_s, fresh_s, kept_s = pct(ref_times), pct(fresh_times), pct(kept_times)
    copy_s = pct(copy_times)
    # What no broker can avoid: A reads what it sends; B validates, writes and commits it.
    floor_s = out_means.get("collect", 0.0) + sum(
        in_means.get(p, 0.0) for p in ("validate", "write", "commit")
    )
    # What no step covers: at A, its POST less its steps; from the outbox row (A's created_at)
    # to B's acknowledgement, that span less the steps on its path (A's from the outbox on, B's).
    unstepped_a = statistics.mean(sent_times) - sum(out_means.values())
    unstepped_delivery = statistics.mean(broker_times) - (
        sum(out_means.get(p, 0.0) for p in ("outbox", "coordinator", "outbox_sent"))
        + sum(in_means.values())
    )
    result = {
        "when": datetime.now(UTC).isoformat(),
        "machine": platform.platform(),
        "referrals": ns.referrals,
        "bundle_resources": statistics.median(bundle_sizes),
        "direct_read_resources": statistics.median(direct_sizes),
        "referral_latency_s": referral_s,
        "send_at_a_returned_s": pct(sent_times),
        "sealed_at_a_to_imported_at_b_s": pct(broker_times),
        "direct_https_new_connection_s": fresh_s,
        "direct_https_keepalive_s": kept_s,
        "ratio_vs_new_connection": {q: referral_s[q] / fresh_s[q] for q in ("p50", "p99")},
        "ratio_vs_keepalive": {q: referral_s[q] / kept_s[q] for q in ("p50", "p99")},
        "target_ratio": 2.0,
        "send_phases_at_a_mean_s": out_means,
        "import_phases_at_b_mean_s": in_means,
        "send_at_a_not_in_a_step_mean_s": unstepped_a,
        "outbox_to_ack_not_in_a_step_mean_s": unstepped_delivery,
        "direct_copy_a_to_b_s": copy_s,
        "direct_copy_resources": statistics.median(copy_sizes),
        "ratio_vs_direct_copy": {q: referral_s[q] / copy_s[q] for q in ("p50", "p99")},
        "floor_s": floor_s,
        "floor_ratio_vs_new_connection_p50": floor_s / fresh_s["p50"],
        "throughput": {
            "envelopes": ns.envelopes,
            "accepted_per_s": ns.envelopes / accepted_s,
            "delivered_per_s": ns.envelopes / delivered_s,
            "cpu_ms_per_envelope": cpu_ms,
            "outcomes_at_b": outcomes,
            "load_average_after": load_after,
        },
        "load_average_referrals": load_referrals,
        "targets_issue_19": {
            "ratio_vs_direct_copy_p50": 1.25,
            "ratio_vs_direct_copy_p99": 1.4,
            "envelopes_per_s": 100,
        },
    }
    table = Table(title="Exchange: referral through the coordinator vs a direct HTTPS read")
    table.add_column("measure")
    table.add_column("p50", justify="right")
    table.add_column("p99", justify="right")

    def ms(row: str, values: dict[str, float]) -> None:
        table.add_row(row, f"{values['p50'] * 1000:.0f} ms", f"{values['p99'] * 1000:.0f} ms")

    def ratio(row: str, values: dict[str, float]) -> None:
        table.add_row(row, f"{values['p50']:.1f}×", f"{values['p99']:.1f}×")

    ms(f"referral send@A → imported@B ({result['bundle_resources']:.0f} resources)", referral_s)
    ms("  of which: A's POST returned (consent, pack, seal, queued)", pct(sent_times))
    ms("  sealed envelope handed to the coordinator → imported at B", pct(broker_times))
    ms(
        f"direct HTTPS read of A's $everything ({result['direct_read_resources']:.0f} entries), "
        "new connection",
        fresh_s,
    )
    ms("direct HTTPS read, kept-alive connection", kept_s)
    ratio(
        "ratio: referral / direct read on a new connection (target ≤ 2×)",
        result["ratio_vs_new_connection"],
    )
    ratio("ratio: referral / direct read on a kept-alive connection", result["ratio_vs_keepalive"])
    ms(
        f"direct copy without the broker: HTTPS read at A + transaction of "
        f"{result['direct_copy_resources']:.0f} resources into B",
        copy_s,
    )
    ratio(
        "ratio: referral / direct copy (what the broker adds; issue 19 target ≤ 1.25× p50, "
        "≤ 1.4× p99)",
        result["ratio_vs_direct_copy"],
    )
    console.print(table)
    steps = Table(
        title="Where a referral's time goes (mean per referral, from the nodes' /metrics)"
    )
    steps.add_column("at")
    steps.add_column("step")
    steps.add_column("mean", justify="right")
    for where, means, order in (
        ("A (send)", out_means, OUT_PHASES),
        ("B (import)", in_means, IN_PHASES),
    ):
        for phase in order:
            if phase in means:
                steps.add_row(where, phase, f"{means[phase] * 1000:.1f} ms")
    steps.add_row(
        "A (send)", "not in a step: HTTP, token, Patient read", f"{unstepped_a * 1000:.1f} ms"
    )
    steps.add_row(
        "coordinator",
        "not in a step: delivery (wake, claim, epoch, audit), gRPC hops",
        f"{unstepped_delivery * 1000:.1f} ms",
    )
    console.print(steps)
    console.print(
        f"unavoidable part (A's collect + B's validate, write, commit): {floor_s * 1000:.0f} ms"
        f" = {result['floor_ratio_vs_new_connection_p50']:.1f}× the direct read (p50, new "
        "connection); the broker's own share is the rest."
    )
    console.print(
        f"load average during the referrals: {load_referrals[0]:.1f} / {load_referrals[1]:.1f} / "
        f"{load_referrals[2]:.1f}"
    )
    tp = result["throughput"]
    console.print(
        f"throughput through one coordinator: {tp['accepted_per_s']:.0f} envelopes/s accepted, "
        f"{tp['delivered_per_s']:.0f} envelopes/s delivered and acknowledged "
        f"({ns.envelopes} envelopes, 8 sender threads; B's outcomes {tp['outcomes_at_b']}; "
        f"target ≥ 100/s); CPU ms per envelope: "
        + ", ".join(f"{k} {v:.1f}" for k, v in tp["cpu_ms_per_envelope"].items())
        + f"; load average {load_after[0]:.1f}"
    )
    out = ROOT / "bench" / "results" / "exchange.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    console.print(f"written {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
