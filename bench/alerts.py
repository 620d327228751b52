"""Must-show 4 of issue 14: alert latency (home reading POST → alert event on the doctor's SSE
stream) under load, and the node's write throughput with the care rules on against off.

Run: ``.venv/bin/python bench/alerts.py [--patients 10000] [--rate 50] [--clients 20]
[--duration 60] [--throughput-seconds 30] [--alert-every 20]``

Starts a real node (``ipjms node init`` + ``ipjms node serve`` through deploy.launcher, SQLite,
``IPJMS_NODE_CARE_ENABLED=true``, responsible user ``dr-wang``) and measures in the same run:

1. **enrolment**: ``--patients`` patients, each a Patient + an active ICD-10 I10 Condition,
   written by transaction Bundles of ``--batch`` patients; the care worker enrols each on the
   hypertension pathway from the commit events. Waits (deadline ``--enrol-deadline``) until
   that many active CarePlans exist and reports the enrolment rate (plans/s, from the first
   write to the last plan seen).
2. **alert latency**: a doctor subscribes to ``GET /care/alerts/stream``; ``--clients`` HTTP
   clients post home BP readings (``85354-9`` panels) at ``--rate``/s for ``--duration`` s on
   a fixed schedule (open loop: a late client sends at once, it does not skip). Every
   ``--alert-every``-th reading is 186/112 mmHg (rule ``htn-bp-urgent``) for a patient not used
   before; the rest are 122/78 for other patients. Latency = from just before the alerting
   POST is sent to the arrival of the stream event whose DetectedIssue names that patient.
   p50/p99/max; alerts that never arrive within ``--grace`` s are counted as missed.
3. **write throughput, rules on vs off**: ``--clients`` clients post in-range readings in a
   closed loop for ``--throughput-seconds`` s on the care-on node; then the node is stopped
   and the same data directory served again with ``care_enabled`` false, and the same load
   run. Ratio on/off (target ≥ 0.8). After the care-on run an alerting sentinel reading
   is posted and the time to its alert is reported: how long the worker took to drain the
   backlog the closed loop left (the POSTs do not wait for the rules).

Prints a table and writes ``bench/results/alerts.json``. Targets: p99 ≤ 1 s (goal 500 ms),
throughput ratio ≥ 0.8.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deploy.launcher import free_port, ipjms_command, start_service  # noqa: E402

PASSWORD = "care-bench-password-1"
FHIR = "application/fhir+json"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _ipjms(*args: str, env: dict[str, str]) -> None:
    r = subprocess.run(
        ipjms_command(*args), capture_output=True, text=True, env={**os.environ, **env},
        timeout=300,
    )  # fmt: skip
    if r.returncode != 0:
        raise RuntimeError(f"ipjms {' '.join(args[:2])} failed: {r.stderr[-2000:]}")


def _bp(pid: str, systolic: float, diastolic: float) -> dict[str, Any]:
    def comp(code: str, value: float) -> dict[str, Any]:
        q = {"value": value, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"}
        return {"code": {"coding": [{"system": LOINC, "code": code}]}, "valueQuantity": q}

    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                  "observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": datetime.now(UTC).isoformat(),
        "component": [comp("8480-6", systolic), comp("8462-4", diastolic)],
    }  # fmt: skip


def _enrol_bundle(count: int) -> dict[str, Any]:
    entries = []
    for _ in range(count):
        full = f"urn:uuid:{uuid.uuid4()}"
        condition = {
            "resourceType": "Condition",
            "clinicalStatus": {"coding": [{"system": CLINICAL, "code": "active"}]},
            "code": {"coding": [{"system": ICD10, "code": "I10"}]},
            "subject": {"reference": full},
        }
        entries += [
            {"fullUrl": full, "resource": {"resourceType": "Patient"},
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": condition, "request": {"method": "POST", "url": "Condition"}},
        ]  # fmt: skip
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


class Node:
    def __init__(self, root: Path) -> None:
        self.data_dir, self.log_dir = root / "node", root / "logs"
        env = {"IPJMS_ADMIN_PASSWORD": PASSWORD}
        _ipjms("node", "init", "--org", "org-bench-care", "--name", "Care bench", "--data-dir",
               str(self.data_dir), "--level", "community", env=env)  # fmt: skip
        _ipjms("node", "user", "add", "--data-dir", str(self.data_dir), "--username", "dr-wang",
               "--role", "doctor", env={"IPJMS_USER_PASSWORD": PASSWORD})  # fmt: skip
        self.service: Any = None
        self.url = ""
        self.tick_seconds = 60.0

    def serve(self, care: bool) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {"IPJMS_NODE_CARE_ENABLED": "true" if care else "false",
               "IPJMS_NODE_CARE_RESPONSIBLE_USER": "dr-wang",
               "IPJMS_NODE_CARE_TICK_SECONDS": str(self.tick_seconds)}  # fmt: skip
        self.service = start_service(
            f"care-node-{'on' if care else 'off'}",
            ["node", "serve", "--data-dir", str(self.data_dir), "--port", str(port)],
            base_url=self.url, log_dir=self.log_dir, env=env,
        )  # fmt: skip
        self.token = httpx.post(
            f"{self.url}/auth/token",
            data={"grant_type": "password", "username": "dr-wang", "password": PASSWORD},
            timeout=60,
        ).json()["access_token"]

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
            self.service = None

    def client(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": FHIR}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)


class Stream:
    """The doctor's SSE subscription on its own thread: (DetectedIssue, arrival) into a queue."""

    def __init__(self, node: Node) -> None:
        self.events: queue.Queue[tuple[dict[str, Any], float]] = queue.Queue()
        self._client = httpx.Client(timeout=httpx.Timeout(60.0, read=None))
        self.ready = threading.Event()
        headers = {"Authorization": f"Bearer {node.token}"}
        url = f"{node.url}/care/alerts/stream"
        threading.Thread(target=self._read, args=(url, headers), daemon=True).start()
        if not self.ready.wait(60):
            raise RuntimeError("alert stream did not open")

    def _read(self, url: str, headers: dict[str, str]) -> None:
        try:
            with self._client.stream("GET", url, headers=headers) as r:
                if r.status_code != 200:
                    raise RuntimeError(f"stream: HTTP {r.status_code}")
                self.ready.set()
                data = None
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        data = json.loads(line[6:])
                    elif line == "" and data is not None:
                        self.events.put((data, time.monotonic()))
                        data = None
        except (httpx.HTTPError, RuntimeError):
            pass  # closed at the end

    def first_alert_per_patient(self, wanted: set[str], until: float) -> dict[str, float]:
        """patient id → arrival of its first htn-bp-urgent event, until all came or ``until``."""
        got: dict[str, float] = {}
        while wanted - got.keys() and time.monotonic() < until:
            try:
                issue, arrived = self.events.get(timeout=0.2)
            except queue.Empty:
                continue
            pid = issue.get("patient", {}).get("reference", "").removeprefix("Patient/")
            code = issue.get("code", {}).get("coding", [{}])[0].get("code")
            if pid in wanted and code == "htn-bp-urgent" and pid not in got:
                got[pid] = arrived
        return got

    def close(self) -> None:
        self._client.close()


def enrol(node: Node, n: int, batch: int, deadline_s: float, console: Console) -> dict[str, Any]:
    started = time.monotonic()
    pids: list[str] = []
    with node.client() as c:
        for i in range(0, n, batch):
            r = c.post("/fhir", content=json.dumps(_enrol_bundle(min(batch, n - i))))
            if r.status_code != 200:
                raise RuntimeError(f"enrolment transaction: HTTP {r.status_code} {r.text[:300]}")
            for entry in r.json()["entry"]:
                loc = entry["response"]["location"]
                if loc.startswith("Patient/"):
                    pids.append(loc.split("/")[1])
        written = time.monotonic()
        deadline = started + deadline_s
        plans = 0
        while time.monotonic() < deadline:
            bundle = c.get("/fhir/CarePlan", params={"status": "active", "_summary": "count"})
            plans = int(bundle.json().get("total", 0))
            if plans >= n:
                break
            console.print(f"  enrolled {plans}/{n} after {time.monotonic() - started:.0f} s")
            time.sleep(2.0)
    done = time.monotonic()
    return {"patients": n, "pids": pids, "plans": plans, "complete": plans >= n,
            "write_seconds": written - started, "seconds": done - started,
            "plans_per_second": plans / max(done - started, 1e-9)}  # fmt: skip


def latency_phase(
    node: Node, pids: list[str], ns: argparse.Namespace, console: Console
) -> dict[str, Any]:
    total = int(ns.rate * ns.duration)
    alerting = [i for i in range(total) if i % ns.alert_every == ns.alert_every - 1]
    if len(alerting) * 2 > len(pids):
        raise SystemExit(f"--patients too small for {len(alerting)} distinct alerting patients")
    alert_pids = pids[: len(alerting)]
    calm_pids = pids[len(alerting) :]
    plan: list[tuple[str, bool]] = []
    a = 0
    for i in range(total):
        if i % ns.alert_every == ns.alert_every - 1:
            plan.append((alert_pids[a], True))
            a += 1
        else:
            plan.append((calm_pids[i % len(calm_pids)], False))
    sent: dict[str, float] = {}
    post_ms: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stream = Stream(node)
    t0 = time.monotonic() + 0.5
    index = iter(range(total))

    def client_loop() -> None:
        with node.client() as c:
            while True:
                with lock:
                    i = next(index, None)
                if i is None:
                    return
                delay = t0 + i / ns.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                pid, alerting_reading = plan[i]
                body = _bp(pid, 186, 112) if alerting_reading else _bp(pid, 122, 78)
                start = time.monotonic()
                if alerting_reading:
                    sent[pid] = start
                r = c.post("/fhir/Observation", content=json.dumps(body))
                with lock:
                    post_ms.append((time.monotonic() - start) * 1000)
                    if r.status_code != 201:
                        errors.append(f"{r.status_code} {r.text[:200]}")

    console.print(f"posting {total} readings at {ns.rate}/s from {ns.clients} clients "
                  f"({len(alerting)} alerting)…")  # fmt: skip
    threads = [threading.Thread(target=client_loop) for _ in range(ns.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    posting_s = time.monotonic() - t0
    arrived = stream.first_alert_per_patient(set(alert_pids), time.monotonic() + ns.grace)
    stream.close()
    lat = [(arrived[p] - sent[p]) * 1000 for p in alert_pids if p in arrived and p in sent]
    return {
        "readings": total, "alerting": len(alerting), "achieved_rate": total / posting_s,
        "post_errors": len(errors), "first_errors": errors[:3],
        "post_ms_p50": _pct(post_ms, 0.5), "post_ms_p99": _pct(post_ms, 0.99),
        "alerts_received": len(lat), "alerts_missed": len(alerting) - len(lat),
        "latency_ms_p50": _pct(lat, 0.5) if lat else None,
        "latency_ms_p99": _pct(lat, 0.99) if lat else None,
        "latency_ms_max": max(lat) if lat else None,
        "latency_ms_mean": statistics.fmean(lat) if lat else None,
    }  # fmt: skip


def throughput(node: Node, pids: list[str], clients: int, seconds: float) -> dict[str, Any]:
    stop_at = time.monotonic() + seconds
    counts = [0] * clients
    failures = [0] * clients

    def loop(k: int) -> None:
        with node.client() as c:
            j = k
            while time.monotonic() < stop_at:
                r = c.post(
                    "/fhir/Observation", content=json.dumps(_bp(pids[j % len(pids)], 121, 77))
                )
                if r.status_code == 201:
                    counts[k] += 1
                else:
                    failures[k] += 1
                j += clients

    start = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(loop, range(clients)))
    elapsed = time.monotonic() - start
    return {"writes": sum(counts), "failures": sum(failures), "seconds": elapsed,
            "writes_per_second": sum(counts) / elapsed}  # fmt: skip


def drain_time(node: Node, pid: str, limit: float) -> float | None:
    """Post one alerting reading now; seconds until its alert reaches the stream."""
    stream = Stream(node)
    with node.client() as c:
        start = time.monotonic()
        r = c.post("/fhir/Observation", content=json.dumps(_bp(pid, 190, 115)))
        if r.status_code != 201:
            raise RuntimeError(f"sentinel: HTTP {r.status_code}")
    got = stream.first_alert_per_patient({pid}, time.monotonic() + limit)
    stream.close()
    return got[pid] - start if pid in got else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=50, help="patients per enrolment Bundle")
    parser.add_argument("--enrol-deadline", type=float, default=900.0)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--alert-every", type=int, default=20)
    parser.add_argument("--grace", type=float, default=60.0)
    parser.add_argument("--throughput-seconds", type=float, default=30.0)
    parser.add_argument("--tick-seconds", type=float, default=60.0,
                        help="the care scheduler's tick (the node's default: 60)")  # fmt: skip
    ns = parser.parse_args()
    console = Console()
    machine = {"cpus": os.cpu_count(), "python": platform.python_version()}
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(),
        "args": vars(ns),
        "machine": machine,
    }
    with tempfile.TemporaryDirectory(prefix="ipjms-bench-alerts-") as tmp:
        node = Node(Path(tmp))
        node.tick_seconds = ns.tick_seconds
        try:
            node.serve(care=True)
            console.print(f"enrolling {ns.patients} patients (I10) in batches of {ns.batch}…")
            enrolment = enrol(node, ns.patients, ns.batch, ns.enrol_deadline, console)
            pids = enrolment.pop("pids")
            result["enrolment"] = enrolment
            if not enrolment["complete"]:
                console.print(f"[red]only {enrolment['plans']} of {ns.patients} enrolled "
                              "before the deadline[/red]")  # fmt: skip
            result["latency"] = latency_phase(node, pids, ns, console)
            alerted = result["latency"]["alerting"]
            calm = pids[alerted * 2 :] or pids
            console.print(f"closed-loop writes, rules on ({ns.throughput_seconds:.0f} s)…")
            on = throughput(node, calm, ns.clients, ns.throughput_seconds)
            on["backlog_drain_seconds"] = drain_time(node, pids[alerted], 240.0)
            node.stop()
            node.serve(care=False)
            console.print(f"closed-loop writes, rules off ({ns.throughput_seconds:.0f} s)…")
            off = throughput(node, calm, ns.clients, ns.throughput_seconds)
            ratio = on["writes_per_second"] / off["writes_per_second"]
            result["throughput"] = {"care_on": on, "care_off": off, "ratio": ratio}
        finally:
            node.stop()
    _report(console, result)
    out = ROOT / "bench" / "results" / "alerts.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {out.relative_to(ROOT)}")
    return 0


def _fmt(v: float | None, unit: str = "") -> str:
    return "—" if v is None else f"{v:,.0f}{unit}" if v >= 100 else f"{v:,.1f}{unit}"


def _report(console: Console, r: dict[str, Any]) -> None:
    e, lat, tp = r["enrolment"], r["latency"], r["throughput"]
    t = Table(title="care alerts (issue 14, must-show 4)")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_column("target")
    t.add_row("patients enrolled (active CarePlans)", f"{e['plans']:,} / {e['patients']:,}", "")
    t.add_row("enrolment rate", _fmt(e["plans_per_second"], " plans/s"), "")
    t.add_row("readings posted / achieved rate",
              f"{lat['readings']:,} / {lat['achieved_rate']:.1f}/s", "")  # fmt: skip
    post = f"{_fmt(lat['post_ms_p50'], ' ms')} / {_fmt(lat['post_ms_p99'], ' ms')}"
    t.add_row("POST latency p50 / p99", post, "")
    t.add_row(
        "alerts received / missed", f"{lat['alerts_received']} / {lat['alerts_missed']}", "0 missed"
    )
    t.add_row("POST → alert event p50", _fmt(lat["latency_ms_p50"], " ms"), "")
    t.add_row("POST → alert event p99", _fmt(lat["latency_ms_p99"], " ms"), "≤ 1,000 ms (goal 500)")
    t.add_row("POST → alert event max", _fmt(lat["latency_ms_max"], " ms"), "")
    t.add_row("writes/s, rules on", _fmt(tp["care_on"]["writes_per_second"]), "")
    t.add_row("writes/s, rules off", _fmt(tp["care_off"]["writes_per_second"]), "")
    t.add_row("ratio on/off", f"{tp['ratio']:.2f}", "≥ 0.8")
    t.add_row(
        "backlog drain after closed loop", _fmt(tp["care_on"]["backlog_drain_seconds"], " s"), ""
    )
    console.print(t)


if __name__ == "__main__":
    raise SystemExit(main())
