"""Ambiguous success (issue 13 item 10) against a real ``ipjms node serve`` process: a client sends
a large transaction with an ``Idempotency-Key``, its connection drops before it reads the answer
(a raw socket closed right after sending), the server commits anyway; the blind retry with the
same key gets the original ids back and the store holds one copy."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx

from deploy.launcher import ipjms_command, start_service, wait_until

PASSWORD = "retry-doctor-pass"
N_PATIENTS = 100  # 200 entries: a transaction that takes a while to commit


def _ipjms(*args: str, **env: str) -> None:
    full_env = {**os.environ, **env}
    r = subprocess.run(
        ipjms_command(*args), capture_output=True, text=True, env=full_env, timeout=240
    )
    assert r.returncode == 0, r.stderr


def _bundle() -> dict[str, Any]:
    entries = []
    for i in range(N_PATIENTS):
        pid = f"urn:uuid:{uuid.uuid4()}"
        entries += [
            {
                "fullUrl": pid,
                "resource": {"resourceType": "Patient", "name": [{"family": f"Dropped{i}"}]},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "heart rate"},
                    "subject": {"reference": pid},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _send_raw(port: int, headers: dict[str, str], body: bytes) -> socket.socket:
    """Send the whole request on a raw socket; the caller never reads from it."""
    head = ["POST /fhir HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    return sock


def test_retry_after_a_dropped_connection_stores_one_copy(db_url: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    _ipjms(
        "node", "init", "--org", "org-retry", "--name", "Retry", "--data-dir", str(data_dir),
        "--db", db_url, IPJMS_ADMIN_PASSWORD="admin-pass-for-tests",
    )  # fmt: skip
    _ipjms(
        "node", "user", "add", "--data-dir", str(data_dir), "--username", "drretry",
        "--role", "doctor", IPJMS_USER_PASSWORD=PASSWORD,
    )  # fmt: skip
    args = ["node", "serve", "--data-dir", str(data_dir), "--port", "0"]
    service = start_service(
        "node-retry", args, base_url="http://127.0.0.1:{http}", log_dir=tmp_path / "logs",
        ports_dir=data_dir,
    )  # fmt: skip
    url, port = service.base_url, int(service.extra["ports"]["http"])
    try:
        token = httpx.post(
            f"{url}/auth/token",
            data={"grant_type": "password", "username": "drretry", "password": PASSWORD},
        ).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        headers = {**auth, "Content-Type": "application/fhir+json", "Idempotency-Key": "tx-42"}
        body = json.dumps(_bundle()).encode()

        def patients() -> int:
            r = httpx.get(f"{url}/fhir/Patient", params={"_summary": "count"}, headers=auth)
            return int(r.json()["total"])

        sock = _send_raw(port, headers, body)
        try:  # the server commits; the client is gone before it reads a byte of the answer
            wait_until(lambda: patients() == N_PATIENTS, timeout=120, what="the commit")
        finally:
            sock.close()

        retry = httpx.post(f"{url}/fhir", headers=headers, content=body, timeout=120)
        assert retry.status_code == 200, retry.text
        assert patients() == N_PATIENTS  # one copy, not two
        observations = httpx.get(
            f"{url}/fhir/Observation", params={"_summary": "count"}, headers=auth
        ).json()["total"]
        assert observations == N_PATIENTS
        # the retry's answer names exactly what the dropped request stored
        returned = {
            e["response"]["location"].split("/_history")[0]
            for e in retry.json()["entry"]
            if e["response"]["location"].startswith("Patient/")
        }
        stored = httpx.get(f"{url}/fhir/Patient", params={"_count": "1000"}, headers=auth).json()
        assert returned == {f"Patient/{e['resource']['id']}" for e in stored["entry"]}
    finally:
        service.stop()
