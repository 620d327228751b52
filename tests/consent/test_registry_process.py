"""The registry as an operator runs it: a real ``ipjms consent serve`` process on loopback,
driven by ConsentClient over HTTP; state survives a crash (SIGKILL); the ledger verifies with
``ipjms audit verify``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
from consent_harness import Pki, treat_consent

from consent.client import ConsentClient
from consent.decision_token import verify_decision_token
from deploy.launcher import ipjms_command, start_service

P = "e5" * 32


def test_real_process_enrol_grant_decide_crash_revoke(
    pki: Pki, db_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "consent"
    args = [
        "consent",
        "serve",
        "--data-dir",
        str(data),
        "--port",
        "0",
        "--db",
        db_url,
        "--ca-dir",
        str(pki.ca_dir),
    ]
    service = start_service(
        "consent", args, base_url="http://127.0.0.1:{http}", log_dir=tmp_path / "logs",
        ports_dir=data,
    )  # fmt: skip
    base = service.base_url
    args[args.index("--port") + 1] = base.rsplit(":", 1)[1]  # the restart keeps its port
    try:
        hosp = ConsentClient(base, pki.orgs["hosp-a"])
        code = hosp.create_enrolment_code(P)["code"]
        enrolled = httpx.post(f"{base}/enrol", json={"code": code, "password": "a fine password"})
        assert enrolled.status_code == 201
        login = httpx.post(
            f"{base}/auth/patient-token",
            data={"username": enrolled.json()["username"], "password": "a fine password"},
        )
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        created = httpx.post(f"{base}/fhir/Consent", json=treat_consent(P), headers=headers)
        assert created.status_code == 201, created.text
        cid = created.json()["id"]
        d = hosp.decide(P, "clinic-b", "TREAT", ["Condition"])
        assert d.permit

        # crash: everything acknowledged must survive
        service.kill()
        service = start_service("consent", args, base_url=base, log_dir=tmp_path / "logs")
        jwks = httpx.get(f"{base}/.well-known/jwks.json").json()
        assert verify_decision_token(d.token, jwks).permit  # same key after restart
        again = ConsentClient(base, pki.orgs["clinic-c"]).decide(
            P, "clinic-b", "TREAT", ["Condition"]
        )
        assert again.permit and again.consent_ids == (cid,)

        login = httpx.post(
            f"{base}/auth/patient-token", data={"username": P, "password": "a fine password"}
        )
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        revoked = httpx.post(f"{base}/fhir/Consent/{cid}/$revoke", headers=headers)
        assert revoked.status_code == 200
        assert not hosp.decide(P, "clinic-b", "TREAT", ["Condition"]).permit
    finally:
        service.stop()
    verify = subprocess.run(
        ipjms_command("audit", "verify", "--db", db_url), capture_output=True, text=True, timeout=60
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
