"""Issue 15 must-show 5: home readings accepted at a node over HTTP from concurrent patient
clients, against the same Observations written by a doctor token in the same run; and the
region's patient sign-in latency under concurrent sign-ins.

Run: ``.venv/bin/python bench/uploads.py [--patients 50] [--seconds 10] [--logins 20]``

1. Starts a real consent registry (``ipjms consent serve``) and a real node (``ipjms node init``
   + ``serve``, SQLite) that pins the registry's patient-token key, with a fresh regional PKI.
2. Creates ``--patients`` Patients at the node; each is enrolled at the registry with a code
   the node asks for (``POST /consent/enrolment-code``) and signs in through the registry's
   OpenID Connect flow (authorization code + PKCE), ``--logins`` sign-ins at a time: login
   p50/p99 is the whole flow (authorize → code → token), argon2 included.
3. Patient path: ``--patients`` concurrent clients, each with its own patient's regional token,
   post one reading per request to ``POST /patient/readings`` (with a client identifier, as an
   app that may re-send) for ``--seconds``. Baseline, same run and node: as many concurrent
   clients with a doctor token post the same Observations to ``POST /fhir/Observation``. The
   ratio is the cost of the patient path (token from the region, pseudonym mapping, write rule,
   plausibility, idempotent id). Client threads share the machine with the node, equally in
   both phases.

Prints a table and writes ``bench/results/uploads.json``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deploy.launcher import free_port, ipjms_command, start_service  # noqa: E402
from node.identity import NATIONAL_ID_SYSTEM  # noqa: E402
from trust.pki import init_ca, issue_org  # noqa: E402
from trust.tokens import jwk_thumbprint, load_or_create_signing_key  # noqa: E402

PASSWORD = "bench-password-1"
PATIENT_PASSWORD = "bench patient password"
FHIR = "application/fhir+json"
CLIENT_ID = "ipjms-patient-app"
REDIRECT = "http://127.0.0.1:8765/callback"
SCOPE = "openid patient/*.rs patient/Observation.cu"


def _ipjms(*args: str, env: dict[str, str] | None = None) -> str:
    r = subprocess.run(ipjms_command(*args), capture_output=True, text=True,
                       env={**os.environ, **(env or {})}, timeout=300)  # fmt: skip
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    return r.stdout


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def sign_in(registry: str, username: str) -> tuple[str, float]:
    """The OpenID Connect flow; (access token, seconds it took)."""
    start = time.perf_counter()
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    params = {"response_type": "code", "client_id": CLIENT_ID, "redirect_uri": REDIRECT,
              "scope": SCOPE, "state": "s", "code_challenge": challenge.rstrip(b"=").decode(),
              "code_challenge_method": "S256"}  # fmt: skip
    with httpx.Client(timeout=120) as c:
        r = c.post(f"{registry}/oidc/authorize",
                   data={**params, "username": username, "password": PATIENT_PASSWORD})  # fmt: skip
        if r.status_code != 303:
            raise RuntimeError(f"authorize: {r.status_code} {r.text[:200]}")
        code = parse_qs(urlsplit(r.headers["location"]).query)["code"][0]
        r = c.post(f"{registry}/oidc/token", data={"grant_type": "authorization_code",
                   "code": code, "redirect_uri": REDIRECT, "client_id": CLIENT_ID,
                   "code_verifier": verifier})  # fmt: skip
        if r.status_code != 200:
            raise RuntimeError(f"token: {r.status_code} {r.text[:200]}")
    return str(r.json()["access_token"]), time.perf_counter() - start


def reading(patient: str | None, k: int) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        "effectiveDateTime": datetime.now(UTC).isoformat(),
        "valueQuantity": {"value": 70 + (k % 50) / 10, "unit": "kg",
                          "system": "http://unitsofmeasure.org", "code": "kg"},
        "identifier": [{"system": "urn:ipjms:bench-app", "value": uuid.uuid4().hex}],
    }  # fmt: skip
    if patient is not None:
        obs["subject"] = {"reference": f"Patient/{patient}"}
    return obs


def phase(url: str, tokens: list[str], pids: list[str], seconds: float, patient: bool) -> dict:
    stop_at = time.monotonic() + seconds
    counts, failures, latencies = [0] * len(tokens), [0] * len(tokens), []
    errors: list[str] = []

    def loop(k: int) -> None:
        headers = {"Authorization": f"Bearer {tokens[k]}", "Content-Type": FHIR}
        path = "/patient/readings" if patient else "/fhir/Observation"
        with httpx.Client(base_url=url, headers=headers, timeout=120) as c:
            n = 0
            while time.monotonic() < stop_at:
                body = reading(None if patient else pids[k], n)
                t0 = time.perf_counter()
                r = c.post(path, content=json.dumps(body))
                latencies.append(time.perf_counter() - t0)
                if r.status_code in (200, 201):
                    counts[k] += 1
                else:
                    failures[k] += 1
                    if len(errors) < 3:
                        errors.append(f"{r.status_code} {r.text[:160]}")
                n += 1

    start = time.monotonic()
    with ThreadPoolExecutor(len(tokens)) as pool:
        list(pool.map(loop, range(len(tokens))))
    elapsed = time.monotonic() - start
    return {"readings": sum(counts), "failures": sum(failures), "seconds": round(elapsed, 2),
            "readings_per_second": round(sum(counts) / elapsed, 1),
            "ms_p50": round(1000 * _pct(latencies, 0.5), 1),
            "ms_p99": round(1000 * _pct(latencies, 0.99), 1), "errors": errors}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--logins", type=int, default=20, help="concurrent sign-ins")
    args = ap.parse_args()
    console = Console()
    root = Path(tempfile.mkdtemp(prefix="ipjms-bench-uploads-"))
    init_ca(root / "ca")
    creds = root / "orgs" / "org-bench"
    issue_org(root / "ca", "org-bench", out_dir=creds)
    registry = start_service(
        "consent", ["consent", "serve", "--data-dir", str(root / "consent"), "--port", "0",
                    "--ca-dir", str(root / "ca")],
        base_url="http://127.0.0.1:{http}", log_dir=root / "logs", ports_dir=root / "consent",
    )  # fmt: skip
    node = None
    try:
        pin = jwk_thumbprint(
            load_or_create_signing_key(root / "consent" / "keys" / "access-token.pem").public_jwk()
        )
        data = root / "node"
        admin = {"IPJMS_ADMIN_PASSWORD": PASSWORD}
        _ipjms("node", "init", "--org", "org-bench", "--name", "Bench clinic", "--data-dir",
               str(data), "--level", "community", env=admin)  # fmt: skip
        _ipjms("node", "user", "add", "--data-dir", str(data), "--username", "dr-li", "--role",
               "doctor", env={"IPJMS_USER_PASSWORD": PASSWORD})  # fmt: skip
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {"IPJMS_NODE_CONSENT__URL": registry.base_url,
               "IPJMS_NODE_CONSENT__PATIENT_KEY_PINS": json.dumps([pin]),
               "IPJMS_NODE_PKI__CREDENTIALS_DIR": str(creds)}  # fmt: skip
        node = start_service("node", ["node", "serve", "--data-dir", str(data), "--port",
                             str(port)], base_url=url, log_dir=root / "logs", env=env)  # fmt: skip
        login = {"grant_type": "password", "username": "dr-li", "password": PASSWORD}
        doctor = httpx.post(f"{url}/auth/token", data=login, timeout=60).json()
        dh = {"Authorization": f"Bearer {doctor['access_token']}"}

        console.print(f"enrolling {args.patients} patients at the registry …")
        pids, usernames = [], []
        for i in range(args.patients):
            p = httpx.post(f"{url}/fhir/Patient", headers={**dh, "Content-Type": FHIR},
                           json={"resourceType": "Patient", "identifier": [
                               {"system": NATIONAL_ID_SYSTEM, "value": f"BENCH-{i:05d}"}]},
                           timeout=60).json()  # fmt: skip
            code = httpx.post(f"{url}/consent/enrolment-code", headers=dh,
                              json={"patient": p["id"]}, timeout=60).json()["code"]  # fmt: skip
            enrolled = httpx.post(
                f"{registry.base_url}/enrol",
                json={"code": code, "password": PATIENT_PASSWORD},
                timeout=120,
            )
            pids.append(p["id"])
            usernames.append(enrolled.json()["username"])

        console.print(f"signing in, {args.logins} at a time …")
        with ThreadPoolExecutor(args.logins) as pool:
            results = list(pool.map(lambda u: sign_in(registry.base_url, u), usernames))
        tokens = [t for t, _ in results]
        login_s = [s for _, s in results]
        # warm the node (first use of the registry's keys, pseudonym links)
        for t in tokens:
            httpx.get(f"{url}/fhir/Patient", headers={"Authorization": f"Bearer {t}"}, timeout=120)

        console.print(f"patient uploads: {args.patients} clients, {args.seconds:g} s …")
        patient = phase(url, tokens, pids, args.seconds, patient=True)
        console.print("doctor writes of the same Observations …")
        doctor_tokens = [doctor["access_token"]] * args.patients
        baseline = phase(url, doctor_tokens, pids, args.seconds, patient=False)
    finally:
        if node is not None:
            node.stop()
        registry.stop()

    result = {
        "when": datetime.now(UTC).isoformat(), "machine": platform.platform(),
        "cpus": os.cpu_count(), "patients": args.patients, "seconds": args.seconds,
        "patient_path": patient, "doctor_baseline": baseline,
        "patient_over_doctor_throughput": round(
            patient["readings_per_second"] / baseline["readings_per_second"], 3),
        "login": {"concurrent": args.logins, "count": len(login_s),
                  "ms_p50": round(1000 * _pct(login_s, 0.5), 1),
                  "ms_p99": round(1000 * _pct(login_s, 0.99), 1),
                  "ms_mean": round(1000 * statistics.fmean(login_s), 1)},
    }  # fmt: skip
    table = Table(title="Patient uploads vs doctor writes (same node, same run)")
    for col in ("path", "readings/s", "p50 ms", "p99 ms", "accepted", "failed"):
        table.add_column(col)
    for name, r in (("patient POST /patient/readings", patient),
                    ("doctor POST /fhir/Observation", baseline)):  # fmt: skip
        table.add_row(name, str(r["readings_per_second"]), str(r["ms_p50"]), str(r["ms_p99"]),
                      str(r["readings"]), str(r["failures"]))  # fmt: skip
    console.print(table)
    console.print(f"patient/doctor throughput ratio: {result['patient_over_doctor_throughput']}")
    signin = result["login"]
    console.print(f"sign-in (OIDC code + PKCE, {args.logins} concurrent, {signin['count']} "
                  f"sign-ins): p50 {signin['ms_p50']} ms, p99 {signin['ms_p99']} ms")  # fmt: skip
    out = ROOT / "bench" / "results" / "uploads.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
