"""`ipjms node …` as an operator runs it: real subprocesses, real database, real HTTP server."""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, select

from deploy.launcher import Service, ipjms_command, start_service
from node.store import FhirStore
from node.store.tables import resource_version
from servicekit.ports import read_announced_ports
from servicekit.storage import make_engine

ADMIN_PASSWORD = "admin-pass-for-tests"


def ipjms(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    full_env.pop("IPJMS_ADMIN_PASSWORD", None)
    full_env.update(env or {})
    return subprocess.run(
        ipjms_command(*args), capture_output=True, text=True, env=full_env, timeout=240
    )


def _serve(name: str, args: list[str], data_dir: Path, tmp_path: Path, **kw: Any) -> Service:
    """``ipjms node serve … --port 0``: the node binds a port the OS picks and announces it."""
    return start_service(
        name, args, base_url="http://127.0.0.1:{http}", log_dir=tmp_path / "logs",
        ports_dir=data_dir, **kw,
    )  # fmt: skip


def _mllp_port(service: Service, data_dir: Path) -> int:
    """The MLLP port a node given ``mllp_port = 0`` announced (its background worker binds it
    after the HTTP port is announced)."""
    from deploy.launcher import wait_until

    found: dict[str, int] = {}

    def announced() -> bool:
        assert service.alive(), service.log_tail()
        found.update(read_announced_ports(data_dir) or {})
        return "mllp" in found

    wait_until(announced, 30, what="the MLLP port")
    return found["mllp"]


def _login_failures(data_dir: Path) -> list[dict[str, str]]:
    """The login-failure AuditEvents in the node's ledger: who (or "unknown") and why."""
    from trust.audit_ledger import AuditLedger

    ledger = AuditLedger(make_engine(f"sqlite:///{data_dir / 'audit.db'}"), create=False)
    out = []
    for entry in ledger.entries():
        event = entry.event
        if event["subtype"][0]["code"] != "110122":  # DICOM Login
            continue
        assert event["outcome"] == "8" and event["type"]["code"] == "110114"
        user = event["agent"][0]["who"]["identifier"]["value"]
        out.append({"user": user, "reason": event["outcomeDesc"]})
    return out


def _init(data_dir: Path, db_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    args = ["node", "init", "--org", "org-cli", "--name", "CLI Hospital", "--data-dir"]
    return ipjms(*args, str(data_dir), "--level", "tertiary", "--db", db_url, env=env)


def _distinct_resources(folder: Path) -> Counter[str]:
    keys = set()
    for path in folder.glob("*.json"):
        for entry in json.loads(path.read_text())["entry"]:
            keys.add((entry["resource"]["resourceType"], entry["resource"]["id"]))
    return Counter(t for t, _ in keys)


def _versions(db_url: str, exclude: tuple[str, ...] = ()) -> int:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            stmt = select(func.count()).select_from(resource_version)
            if exclude:
                stmt = stmt.where(resource_version.c.resource_type.not_in(exclude))
            return int(conn.scalar(stmt) or 0)
    finally:
        engine.dispose()


def _counts(db_url: str) -> dict[str, int]:
    engine = make_engine(db_url)
    try:
        return FhirStore(engine).counts()
    finally:
        engine.dispose()


def test_init_ingest_twice_adds_nothing(db_url: str, tmp_path: Path, export_dir: Path) -> None:
    data_dir = tmp_path / "node"
    r = _init(data_dir, db_url)
    assert r.returncode == 0, r.stderr
    assert "admin / " in r.stdout  # generated password printed once
    assert (data_dir / "node.toml").is_file()
    assert (data_dir / "keys" / "token-signing.pem").is_file()

    again = _init(data_dir, db_url)
    assert again.returncode != 0 and "already holds a node" in again.stderr

    first = ipjms("node", "ingest", "--data-dir", str(data_dir), "--db", db_url, str(export_dir))
    assert first.returncode == 0, first.stdout + first.stderr
    expected = _distinct_resources(export_dir)
    assert _counts(db_url) == dict(expected)
    assert "Observation" in first.stdout
    # Synthea's patient bundles (and the generated export's) carry shorter copies of the
    # Organization/Practitioner resources of hospitalInformation*/practitionerInformation* (same
    # ids, different bodies), so those two types legitimately get new versions; every other
    # resource must stay as it was.
    shared = ("Organization", "Practitioner")
    versions = _versions(db_url, exclude=shared)

    second = ipjms("node", "ingest", "--data-dir", str(data_dir), "--db", db_url, str(export_dir))
    assert second.returncode == 0, second.stdout + second.stderr
    assert _counts(db_url) == dict(expected)
    assert _versions(db_url, exclude=shared) == versions  # not even a new version
    total_row = [line for line in second.stdout.splitlines() if "total" in line][-1]
    assert total_row.split("│")[2].strip() == "0"  # created column


def test_bad_file_reported_by_name_rest_continue(tmp_path: Path, synthea_shaped_dir: Path) -> None:
    data_dir = tmp_path / "node"
    db_url = f"sqlite:///{tmp_path / 'n.db'}"
    assert _init(data_dir, db_url, IPJMS_ADMIN_PASSWORD=ADMIN_PASSWORD).returncode == 0
    inbox = tmp_path / "inbox"
    (inbox / "sub").mkdir(parents=True)
    (inbox / "broken.json").write_text('{"resourceType": "Patient", ')
    (inbox / "sub" / "wrong.json").write_text(
        json.dumps({"resourceType": "Patient", "birthDate": "not-a-date"})
    )
    ndjson = [
        {"resourceType": "Patient", "id": "bulk-1", "gender": "female"},
        {"resourceType": "Patient", "id": "bulk-2", "gender": "male"},
    ]
    (inbox / "Patient.ndjson").write_text("\n".join(json.dumps(r) for r in ndjson) + "\n")
    hospitals = next(synthea_shaped_dir.glob("hospitalInformation*.json"))
    practitioners = next(synthea_shaped_dir.glob("practitionerInformation*.json"))
    one_patient = min(
        (p for p in synthea_shaped_dir.glob("*.json") if p not in (hospitals, practitioners)),
        key=lambda p: p.stat().st_size,
    )
    (inbox / "one-patient.json").write_text(one_patient.read_text())
    (inbox / hospitals.name).write_text(hospitals.read_text())
    (inbox / practitioners.name).write_text(practitioners.read_text())
    patient_types = Counter(
        e["resource"]["resourceType"] for e in json.loads(one_patient.read_text())["entry"]
    )

    r = ipjms("node", "ingest", "--data-dir", str(data_dir), str(inbox))
    assert r.returncode == 1
    assert "broken.json" in r.stderr and "invalid JSON" in r.stderr
    assert "wrong.json" in r.stderr and "birthDate" in r.stderr
    counts = _counts(db_url)
    assert counts["Patient"] == patient_types["Patient"] + len(ndjson)  # the good files went in
    assert counts["Observation"] == patient_types["Observation"] > 0


def test_cli_refuses_bad_input_clearly(tmp_path: Path) -> None:
    r = ipjms("node", "ingest", "--data-dir", str(tmp_path / "missing"), str(tmp_path))
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = ipjms("node", "serve", "--data-dir", str(tmp_path), "--port", "1")
    assert r.returncode == 2 and "not an initialised node" in r.stderr
    r = ipjms("node", "init", "--org", "o", "--name", "n", "--data-dir", str(tmp_path / "x"),
              "--level", "galactic")  # fmt: skip
    assert r.returncode == 2 and "--level" in r.stderr


def test_serve_real_process_users_clients_and_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    r = ipjms(
        "node", "init", "--org", "org-srv", "--name", "Served", "--data-dir", str(data_dir),
        env={"IPJMS_ADMIN_PASSWORD": ADMIN_PASSWORD},
    )  # fmt: skip
    assert r.returncode == 0 and ADMIN_PASSWORD not in r.stdout
    r = ipjms(
        "node", "user", "add", "--data-dir", str(data_dir), "--username", "drwho",
        "--role", "doctor", env={"IPJMS_USER_PASSWORD": "tardis-1963"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    bad = ipjms(
        "node", "user", "add", "--data-dir", str(data_dir), "--username", "p",
        "--role", "patient", env={"IPJMS_USER_PASSWORD": "tardis-1963"},
    )  # fmt: skip
    assert bad.returncode == 2 and "Patient" in bad.stderr
    key = ec.generate_private_key(ec.SECP256R1())
    pem_path = tmp_path / "client.pub.pem"
    pem_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    r = ipjms(
        "node", "client", "add", "--data-dir", str(data_dir), "--client-id", "supernode",
        "--public-key", str(pem_path), "--scope", "system/*.rs",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr

    args = ["node", "serve", "--data-dir", str(data_dir), "--port", "0"]
    service = _serve("node-srv", args, data_dir, tmp_path)
    url = service.base_url
    try:
        assert httpx.get(f"{url}/fhir/metadata").json()["resourceType"] == "CapabilityStatement"
        tok = httpx.post(
            f"{url}/auth/token",
            data={"grant_type": "password", "username": "drwho", "password": "tardis-1963"},
        ).json()["access_token"]
        headers = {"Authorization": f"Bearer {tok}", "Content-Type": "application/fhir+json"}
        created = httpx.post(
            f"{url}/fhir/Patient", headers=headers, content=json.dumps({"resourceType": "Patient"})
        )
        assert created.status_code == 201
        pid = created.json()["id"]
        refused = httpx.post(
            f"{url}/auth/token",
            data={"grant_type": "password", "username": "drwho", "password": "wrong-password"},
        )
        # RFC 6749 §5.2: bad resource-owner credentials are invalid_grant (400), as OAuth JSON
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
        assert "wrong-password" not in service.log_tail(200)
        unknown = httpx.post(
            f"{url}/auth/token",
            data={"grant_type": "password", "username": "Anna Novak", "password": "x-x-x-x-x"},
        )
        assert unknown.status_code == 400 and unknown.json()["error"] == "invalid_grant"
        # both failed logins are AuditEvents in the node's ledger, without password or name
        failures = _login_failures(data_dir)
        assert [(f["user"], f["reason"]) for f in failures] == [
            ("drwho", "password: bad_credentials"),
            ("unknown", "password: bad_credentials"),
        ]
        ledger_bytes = b"".join(p.read_bytes() for p in data_dir.glob("audit.db*"))
        assert b"wrong-password" not in ledger_bytes and b"Anna Novak" not in ledger_bytes
        verified = ipjms("audit", "verify", "--data-dir", str(data_dir), "--service", "audit")
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        service.stop()
    assert service.process.returncode == 0  # SIGTERM → graceful stop
    args[-1] = url.rsplit(":", 1)[1]  # the restart serves where the first one did
    service = start_service("node-srv2", args, base_url=url, log_dir=tmp_path / "logs")
    try:
        tok = httpx.post(
            f"{url}/auth/token",
            data={"grant_type": "password", "username": "admin", "password": ADMIN_PASSWORD},
        ).json()["access_token"]
        r2 = httpx.get(f"{url}/fhir/Patient/{pid}", headers={"Authorization": f"Bearer {tok}"})
        assert r2.status_code == 200  # acknowledged before the stop, still there
        admin_write = httpx.delete(
            f"{url}/fhir/Patient/{pid}", headers={"Authorization": f"Bearer {tok}"}
        )
        assert admin_write.status_code == 403
    finally:
        service.stop()


@pytest.mark.parametrize("profile", ["community"])
def test_seed_is_deterministic_and_idempotent(tmp_path: Path, profile: str) -> None:
    data_dir = tmp_path / "node"
    db_url = f"sqlite:///{tmp_path / 's.db'}"
    assert _init(data_dir, db_url, IPJMS_ADMIN_PASSWORD=ADMIN_PASSWORD).returncode == 0
    args = ["node", "seed", "--data-dir", str(data_dir), "--profile", profile]
    r = ipjms(*args, "--patients", "3", "--seed", "7")
    assert r.returncode == 0, r.stderr
    counts = _counts(db_url)
    assert counts["Patient"] == 3 and counts["Observation"] > 0
    versions = _versions(db_url)
    assert ipjms(*args, "--patients", "3", "--seed", "7").returncode == 0
    assert _counts(db_url) == counts and _versions(db_url) == versions
    bad = ipjms(*args[:-1], "martian", "--patients", "3")
    assert bad.returncode == 2 and "--profile" in bad.stderr


# An ORU^R01 from a lab system (segments joined with CR), for the MLLP wiring test.
_MSH = "MSH|^~\\&|LIS|CITYLAB|IPJMS|TERTIARY|20250314093000+0100||ORU^R01^ORU_R01|{id}|P|2.5.1"
_PID = "PID|1||4410230000017^^^NATIONAL^NI~MRN778^^^TERTIARY^MR||Novak^Anna||19520417|F"
_OBR = (
    "OBR|1|PL123^CITYLAB|FL998877^CITYLAB|24323-8^Comprehensive metabolic panel^LN|||"
    "20250314080000+0100|||||||||||||||20250314091500+0100|||F"
)
_OBX = "OBX|1|NM|2345-7^Glucose^LN||{value}|mg/dL^mg/dL^UCUM|70-99|H|||F|||20250314081500+0100"


def _oru(msg_id: str, value: str) -> str:
    return "\r".join([_MSH.format(id=msg_id), _PID, _OBR, _OBX.format(value=value)]) + "\r"


def test_serve_with_mllp_listener_and_csv_ingest(tmp_path: Path) -> None:
    from node.feeds.hl7v2 import send_mllp
    from node.identity import NATIONAL_ID_SYSTEM

    data_dir = tmp_path / "node"
    assert _init(data_dir, f"sqlite:///{tmp_path / 'm.db'}",
                 IPJMS_ADMIN_PASSWORD=ADMIN_PASSWORD).returncode == 0  # fmt: skip
    service = _serve(
        "node-mllp",
        ["node", "serve", "--data-dir", str(data_dir), "--port", "0"],
        data_dir,
        tmp_path,
        env={"IPJMS_NODE_MLLP_PORT": "0"},  # the OS picks; announced as "mllp"
    )
    url = service.base_url
    try:
        mllp_port = _mllp_port(service, data_dir)
        tok = httpx.post(
            f"{url}/auth/token",
            data={"grant_type": "password", "username": "admin", "password": ADMIN_PASSWORD},
        ).json()["access_token"]
        headers = {"Authorization": f"Bearer {tok}"}

        def observations() -> int:
            r = httpx.get(f"{url}/fhir/Observation?_count=0", headers=headers)
            return int(r.json()["total"])

        broken = send_mllp("127.0.0.1", mllp_port, _oru("M1", "not-a-number"))
        assert broken.split("MSA|")[1][:2] in ("AE", "AR")
        assert observations() == 0
        ack = send_mllp("127.0.0.1", mllp_port, _oru("M2", "128"))
        assert ack.split("MSA|")[1][:2] == "AA"
        assert observations() == 1

        csv = tmp_path / "vitals.csv"
        csv.write_text(
            "patient_identifier_system,patient_identifier,loinc,value,unit,effective_datetime\n"
            f"{NATIONAL_ID_SYSTEM},4410230000017,8480-6,142,mm[Hg],2025-03-14T08:20:00Z\n"
            f"{NATIONAL_ID_SYSTEM},4410230000017,8462-4,88,mm[Hg],2025-03-14T08:20:00Z\n"
        )
        for _ in range(2):  # the second load adds nothing
            r = ipjms("node", "ingest", "--data-dir", str(data_dir), str(csv))
            assert r.returncode == 0, r.stdout + r.stderr
            assert observations() == 3
    finally:
        service.stop()


def _listening_pids(port: int, pids: list[int]) -> set[int]:
    """Which of ``pids`` hold a socket listening on 127.0.0.1:``port`` (from /proc)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and int(local.split(":")[1], 16) == port:
            inodes.add(f"socket:[{inode}]")
    holders = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                if os.readlink(fd) in inodes:
                    holders.add(pid)
            except OSError:
                continue
    return holders


def _workers(pid: int) -> list[int]:
    """uvicorn's worker processes below ``pid`` (spawned; not the multiprocessing helpers)."""
    children = [
        int(c)
        for task in Path(f"/proc/{pid}/task").glob("*")
        for c in (task / "children").read_text().split()
    ]
    return [c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def _samples(metrics: str, name: str) -> list[Any]:
    from prometheus_client.parser import text_string_to_metric_families

    return [s for f in text_string_to_metric_families(metrics) for s in f.samples if s.name == name]


def test_two_workers_share_replay_protection_and_metrics(tmp_path: Path) -> None:
    """`--workers 2`: two worker processes answer on one port (each is seen answering), a client
    assertion replayed to either worker is refused, /metrics adds up both workers' counts, the
    background work (the MLLP listener) runs in exactly one of them (one leader of two), and
    every schema is migrated once, by the parent, none by the workers."""
    import time
    import uuid

    import jwt

    from deploy.launcher import wait_until
    from node.app import migration_folders
    from node.feeds.hl7v2 import send_mllp

    data_dir = tmp_path / "node"
    assert _init(data_dir, f"sqlite:///{tmp_path / 'w.db'}",
                 IPJMS_ADMIN_PASSWORD=ADMIN_PASSWORD).returncode == 0  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    r = ipjms("node", "client", "add", "--data-dir", str(data_dir), "--client-id", "sn",
              "--public-key", pem.decode(), "--scope", "system/*.rs")  # fmt: skip
    assert r.returncode == 0, r.stderr
    args = ["node", "serve", "--data-dir", str(data_dir), "--port", "0", "--workers", "2"]
    service = _serve(  # a feature's setting by its section name; 0: announced as "mllp"
        "node-workers", args, data_dir, tmp_path, env={"IPJMS_NODE_HL7__MLLP_PORT": "0"}
    )
    url = service.base_url
    http_port = int(url.rsplit(":", 1)[1])
    metrics_dir = data_dir / "metrics-multiproc"
    try:
        workers = _workers(service.process.pid)
        assert len(workers) == 2, workers
        assert _listening_pids(http_port, workers) == set(workers)  # both serve the port
        mllp_port = _mllp_port(service, data_dir)
        wait_until(lambda: send_mllp("127.0.0.1", mllp_port, _oru("W1", "99")), 30, what="MLLP")
        assert len(_listening_pids(mllp_port, workers)) == 1  # background: exactly one worker

        now = int(time.time())
        claims = {"iss": "sn", "sub": "sn", "aud": f"{url}/auth/token", "iat": now,
                  "exp": now + 60, "jti": uuid.uuid4().hex}  # fmt: skip
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": jwt.encode(claims, key, algorithm="ES256"),
        }

        def answered_by() -> set[int]:  # workers that wrote metrics (each answer counts)
            return {int(p.stem.rsplit("_", 1)[1]) for p in metrics_dir.glob("counter_*.db")}

        statuses = []
        deadline = time.monotonic() + 60
        # fresh connections until both workers have answered (the kernel picks the worker)
        while len(statuses) < 6 or not set(workers) <= answered_by():
            assert time.monotonic() < deadline, f"only {answered_by()} of {workers} answered"
            with httpx.Client() as client:
                statuses.append(client.post(f"{url}/auth/token", data=form).status_code)
        replays = len(statuses) - 1
        assert statuses == [200] + [401] * replays
        metrics = httpx.get(f"{url}/metrics").text
        assert (
            'ipjms_node_login_failures_total{grant_type="client_credentials",reason="replayed"} '
            f"{float(replays)}" in metrics
        )
        leaders = _samples(metrics, "ipjms_node_background_leader")  # one series per worker
        assert sorted(s.value for s in leaders) == [0.0, 1.0], leaders
        tasks = _samples(metrics, "ipjms_node_background_tasks")
        assert {(s.labels["feature"], s.labels["task"], s.value) for s in tasks} == {
            ("hl7-feed", "mllp-listener", 1.0),
            ("fhir-api", "bulk-export", 1.0),  # the $export job runner, in one worker only
        }
    finally:
        service.stop()
    assert service.process.returncode == 0
    logged = [
        json.loads(line) for line in service.log_path.read_text().splitlines() if line[:1] == "{"
    ]
    migrated = Counter(e["feature"] for e in logged if e.get("msg") == "schema migrated")
    assert migrated == Counter(["store", *(name for name, _ in migration_folders())])
