"""A load harness for coordinators sharing one PostgreSQL queue (used by tests/ops and
bench/coordinator_scale.py).

Real processes on loopback: a consent registry (its own PostgreSQL database), one or more
``ipjms coordinator serve`` processes on ONE shared PostgreSQL database (gRPC, mutual TLS), and
sender / recipient organisations as separate processes (coordinator_load_worker.py). Senders are
spread over the coordinators; every recipient keeps an Inbox stream open on every coordinator,
so the replicas compete for the same queue rows.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from consent.client import ConsentClient
from consent.fhir import to_fhir
from consent.policy import ConsentRecord, Provision
from deploy.launcher import Service, ipjms_command, start_service, wait_until
from trust.pki import init_ca, issue_org, load_org
from trust.pseudonym import pseudonym

WORKER = Path(__file__).resolve().parent / "coordinator_load_worker.py"
PASSWORD = "load harness patient"  # noqa: S105 - test patient's registry password


def plain(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def create_database(server_url: str, name: str) -> str:
    """Create database ``name`` on the server of ``server_url``; returns its URL."""
    with psycopg.connect(plain(server_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{plain(server_url).rsplit('/', 1)[0]}/{name}"


def drop_database(server_url: str, url: str) -> None:
    with psycopg.connect(plain(server_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


@dataclass
class LoadResult:
    coordinators: int
    envelopes: int
    sent: list[str]
    sender_errors: list[str]
    deliveries: list[list[Any]]  # [envelope_id, replica index, time]
    acks: dict[str, str]
    bad_opens: int
    queue_states: dict[str, int]
    max_attempts: int
    client_cpu_s: float  # CPU of the sender and recipient processes from the go signal on
    go: float
    last_sent: float
    last_delivered: float

    @property
    def accepted_per_s(self) -> float:
        return self.envelopes / (self.last_sent - self.go)

    @property
    def delivered_per_s(self) -> float:
        return self.envelopes / (self.last_delivered - self.go)


@dataclass
class LoadRegion:
    root: Path
    consent_db: str
    senders: int = 3
    recipients: int = 2
    orgs: dict[str, Path] = field(default_factory=dict)
    services: list[Service] = field(default_factory=list)
    consent_url: str = ""
    pseudo: str = ""

    @property
    def sender_ids(self) -> list[str]:
        return [f"org-sender-{i}" for i in range(self.senders)]

    @property
    def recipient_ids(self) -> list[str]:
        return [f"org-recipient-{i}" for i in range(self.recipients)]

    def start(self) -> None:
        ca = self.root / "pki" / "ca"
        init_ca(ca)
        for org in ["org-coordinator", *self.sender_ids, *self.recipient_ids]:
            issue_org(ca, org, host="127.0.0.1,localhost")
            self.orgs[org] = ca / "orgs" / org
        self.ca_dir = ca
        consent = start_service(
            "consent",
            ["consent", "serve", "--data-dir", str(self.root / "consent"), "--port", "0",
             "--ca-dir", str(ca), "--db", self.consent_db],
            base_url="http://127.0.0.1:{http}", log_dir=self.root / "logs",
            ports_dir=self.root / "consent",
        )  # fmt: skip
        self.services.append(consent)
        self.consent_url = consent.base_url
        # One patient who permits Condition to every recipient for TREAT.
        self.pseudo = pseudonym(b"k" * 32, "LOAD-0001")
        client = ConsentClient(self.consent_url, load_org(self.orgs[self.sender_ids[0]]))
        code = client.create_enrolment_code(self.pseudo)["code"]
        client.close()
        r = httpx.post(f"{self.consent_url}/enrol", json={"code": code, "password": PASSWORD})
        r.raise_for_status()
        r = httpx.post(
            f"{self.consent_url}/auth/patient-token",
            data={"username": r.json()["username"], "password": PASSWORD},
        )
        r.raise_for_status()
        permit = Provision(
            "permit",
            actors=frozenset(self.recipient_ids),
            purposes=frozenset({"TREAT"}),
            classes=frozenset({"Condition"}),
        )
        body = to_fhir(
            ConsentRecord("x", self.pseudo, "active", Provision("deny", provisions=(permit,)))
        )
        del body["id"]
        r = httpx.post(
            f"{self.consent_url}/fhir/Consent",
            json=body,
            headers={"Authorization": f"Bearer {r.json()['access_token']}"},
        )
        r.raise_for_status()

    def start_coordinators(self, count: int, db_url: str, name: str) -> list[Service]:
        """``count`` coordinators sharing ``db_url`` (directory registered once)."""
        config = self.root / f"{name}-orgs.toml"
        lines = []
        for org, path in self.orgs.items():
            level = "authority" if org == "org-coordinator" else "tertiary"
            lines += ["[[organisation]]", f'credentials = "{path}"', f'name = "{org}"',
                      f'level = "{level}"', ""]  # fmt: skip
        config.write_text("\n".join(lines))
        data = self.root / name
        data.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ipjms_command("coordinator", "register-org", "--data-dir", str(data), "--config",
                          str(config), "--db", db_url),
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        started = []
        for i in range(count):
            replica = data / f"replica-{i}"
            args = ["coordinator", "serve", "--data-dir", str(replica), "--port", "0",
                    "--db", db_url,
                    "--ca-dir", str(self.ca_dir), "--org-dir", str(self.orgs["org-coordinator"]),
                    "--consent-url", self.consent_url,
                    "--rate-per-minute", "100000000"]  # fmt: skip
            service = start_service(
                f"{name}-{i}", args, base_url="http://127.0.0.1:{http}",
                log_dir=self.root / "logs", ports_dir=replica,
            )  # fmt: skip
            service.extra["address"] = f"127.0.0.1:{service.extra['ports']['grpc']}"
            started.append(service)
            self.services.append(service)
        return started

    def run_load(
        self,
        coordinators: list[Service],
        db_url: str,
        *,
        per_sender: int,
        threads: int = 4,
        timeout: float = 300,
        on_go: Callable[[], None] | None = None,
        on_done: Callable[[], None] | None = None,
        bound: bool = True,
    ) -> LoadResult:
        """Send ``per_sender`` envelopes from every sender at once (sealed beforehand, not
        timed); returns when every one is acknowledged. ``bound``: each sender first asks the
        registry for a decision bound to each envelope id, as a node does (untimed), so the
        coordinator rechecks by envelope id; else it falls back to a ``$decide`` per check.
        ``on_go``/``on_done`` run right before the senders start and right after the last
        acknowledgement (bench CPU sampling)."""
        name = f"load-{len(coordinators)}-{int(time.time() * 1000)}"
        work = self.root / name
        work.mkdir()
        go, stop = work / "go", work / "stop"
        addresses = [str(c.extra["address"]) for c in coordinators]
        procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        signing = ",".join(f"{s}={self.orgs[s] / 'signing.cert.pem'}" for s in self.sender_ids)
        for org in self.recipient_ids:
            out = work / f"{org}.json"
            cmd = [sys.executable, str(WORKER), "recipient", "--org-dir", str(self.orgs[org]),
                   "--out", str(out), "--addresses", ",".join(addresses), "--senders", signing,
                   "--stop", str(stop), "--go", str(go)]  # fmt: skip
            procs.append((org, subprocess.Popen(cmd, stderr=subprocess.PIPE), out))
        recipient_dirs = ",".join(str(self.orgs[r]) for r in self.recipient_ids)
        for i, org in enumerate(self.sender_ids):
            out = work / f"{org}.json"
            cmd = [sys.executable, str(WORKER), "sender", "--org-dir", str(self.orgs[org]),
                   "--out", str(out), "--address", addresses[i % len(addresses)],
                   "--recipient-dirs", recipient_dirs, "--pseudonym", self.pseudo,
                   "--count", str(per_sender), "--threads", str(threads),
                   "--go", str(go)]  # fmt: skip
            if bound:
                cmd += ["--consent-url", self.consent_url]
            procs.append((org, subprocess.Popen(cmd, stderr=subprocess.PIPE), out))
        try:
            for org, proc, out in procs:
                ready = Path(str(out) + ".ready")

                def is_ready(
                    org: str = org, proc: subprocess.Popen[bytes] = proc, ready: Path = ready
                ) -> bool:
                    if proc.poll() is not None:
                        detail = proc.stderr.read()[-800:]  # type: ignore[union-attr]
                        raise RuntimeError(f"{org} worker exited: {detail!r}")
                    return ready.exists()

                wait_until(is_ready, 120, what=f"{org} worker ready")
            total = per_sender * self.senders
            if on_go is not None:
                on_go()
            t_go = time.time()
            go.write_text(str(t_go))
            for org, proc, _out in procs:
                if org.startswith("org-sender"):
                    proc.wait(timeout)
                    if proc.returncode != 0:
                        raise RuntimeError(f"{org} failed: {proc.stderr.read()[-800:]!r}")  # type: ignore[union-attr]

            def all_final() -> bool:
                return (
                    sum(self._states(db_url).get(s, 0) for s in ("delivered", "rejected")) >= total
                )

            wait_until(all_final, timeout, interval=0.05, what="every envelope acknowledged")
            if on_done is not None:
                on_done()
        finally:
            stop.write_text("stop")
            for _org, proc, _out in procs:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        sent: list[str] = []
        errors: list[str] = []
        last_sent = 0.0
        deliveries: list[list[Any]] = []
        acks: dict[str, str] = {}
        bad = 0
        client_cpu = 0.0
        for org, proc, out in procs:
            if proc.returncode != 0:
                raise RuntimeError(f"{org} failed: {proc.stderr.read()[-800:]!r}")  # type: ignore[union-attr]
            doc = json.loads(out.read_text())
            client_cpu += float(doc["cpu"])
            if org.startswith("org-sender"):
                sent += doc["sent"]
                errors += doc["errors"]
                last_sent = max(last_sent, doc["last"])
            else:
                deliveries += doc["deliveries"]
                acks.update(doc["acks"])
                bad += doc["bad"]
        with psycopg.connect(plain(db_url)) as conn:
            max_attempts = conn.execute(
                "SELECT coalesce(max(attempts), 0) FROM envelopes"
            ).fetchone()
        return LoadResult(
            coordinators=len(coordinators),
            envelopes=total,
            sent=sent,
            sender_errors=errors,
            deliveries=deliveries,
            acks=acks,
            bad_opens=bad,
            client_cpu_s=client_cpu,
            queue_states=self._states(db_url),
            max_attempts=int(max_attempts[0]) if max_attempts else 0,
            go=t_go,
            last_sent=last_sent,
            last_delivered=max((float(d[2]) for d in deliveries), default=t_go),
        )

    @staticmethod
    def _states(db_url: str) -> dict[str, int]:
        with psycopg.connect(plain(db_url)) as conn:
            rows = conn.execute("SELECT state, count(*) FROM envelopes GROUP BY state").fetchall()
        return {str(s): int(n) for s, n in rows}

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()
