"""Every service serves Prometheus metrics and writes JSON log lines without PHI.

A node, the consent registry and the coordinator run as real processes (``serve`` commands,
trust/logging_setup.py). The node is given a patient with a distinctive name and national id,
searched by them, sent invalid resources quoting them and a login attempt named after them; the
registry enrols the patient (by pseudonym) and answers decisions; the coordinator refuses an
envelope for that patient. Then: every line each process wrote is a JSON object, and none
contains the name or the identifier; ``/metrics`` of each counts what happened.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import grpc
import httpx
import pytest

from consent.client import ConsentClient
from deploy.launcher import Service, ipjms_command, start_service
from node.exchange.client import ExchangeClient
from node.identity import NATIONAL_ID_SYSTEM
from trust.envelopes import EnvelopeHeader, seal_to
from trust.pki import init_ca, issue_org, load_org
from trust.pseudonym import load_or_create_linkage_key, pseudonym

FAMILY, GIVEN = "Quixotefield", "Zebulonia"
NATIONAL_ID = "PHI-93847561-X"
BIRTH = "1937-02-28"
FHIR = "application/fhir+json"


def _patient(**extra: object) -> dict[str, object]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": NATIONAL_ID_SYSTEM, "value": NATIONAL_ID}],
        "name": [{"family": FAMILY, "given": [GIVEN]}],
        "birthDate": BIRTH,
        **extra,
    }


def _json_lines(service: Service) -> list[dict[str, object]]:
    text = service.log_path.read_text()
    for needle in (FAMILY, GIVEN, NATIONAL_ID, BIRTH):
        assert needle.lower() not in text.lower(), f"{needle} in {service.name}'s log"
    entries = []
    for line in text.splitlines():
        if line.strip():
            entry = json.loads(line)  # every line is one JSON object
            assert {"ts", "level", "service", "logger", "msg"} <= entry.keys(), line
            entries.append(entry)
    return entries


def test_services_log_json_without_phi_and_serve_metrics(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    init_ca(ca)
    orgs = {o: ca / "orgs" / o for o in ("org-coord", "org-node", "org-peer")}
    for org in orgs:
        issue_org(ca, org, host="127.0.0.1")
    logs = tmp_path / "logs"
    services: list[Service] = []
    try:
        consent = start_service(
            "consent",
            ["consent", "serve", "--data-dir", str(tmp_path / "consent"), "--port", "0",
             "--ca-dir", str(ca)],
            base_url="http://127.0.0.1:{http}", log_dir=logs, ports_dir=tmp_path / "consent",
        )  # fmt: skip
        services.append(consent)
        consent_url = consent.base_url
        directory = tmp_path / "orgs.toml"
        directory.write_text(
            "".join(
                f'[[organisation]]\ncredentials = "{d}"\nname = "{o}"\nlevel = "community"\n\n'
                for o, d in orgs.items()
            )
        )
        coord_dir = tmp_path / "coordinator"
        subprocess.run(
            ipjms_command("coordinator", "register-org", "--data-dir", str(coord_dir),
                          "--config", str(directory)),
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        coordinator = start_service(
            "coordinator",
            ["coordinator", "serve", "--data-dir", str(coord_dir), "--port", "0", "--ca-dir",
             str(ca), "--org-dir", str(orgs["org-coord"]), "--consent-url", consent_url],
            base_url="http://127.0.0.1:{http}", log_dir=logs, ports_dir=coord_dir,
        )  # fmt: skip
        services.append(coordinator)
        node_dir = tmp_path / "node"
        env = {**os.environ, "IPJMS_ADMIN_PASSWORD": "observability admin pw"}
        subprocess.run(
            ipjms_command("node", "init", "--org", "org-node", "--name", "Node", "--data-dir",
                          str(node_dir)),
            check=True, capture_output=True, env=env, timeout=120,
        )  # fmt: skip
        node = start_service(
            "node",
            ["node", "serve", "--data-dir", str(node_dir), "--port", "0"],
            base_url="http://127.0.0.1:{http}",
            log_dir=logs,
            ports_dir=node_dir,
            env={"IPJMS_NODE_CONSENT_URL": consent_url, "IPJMS_NODE_CA_DIR": str(ca),
                 "IPJMS_NODE_ORG_CREDENTIALS_DIR": str(orgs["org-node"])},
        )  # fmt: skip
        services.append(node)

        # --- the node, with patient data in every kind of request -------------------------
        token = subprocess.run(
            ipjms_command("node", "token", "--data-dir", str(node_dir), "--role", "doctor"),
            check=True, capture_output=True, text=True, timeout=60,
        ).stdout.strip()  # fmt: skip
        fhir = httpx.Client(
            base_url=f"{node.base_url}/fhir",
            headers={"Authorization": f"Bearer {token}", "Content-Type": FHIR},
            timeout=30,
        )
        r = fhir.post("/Patient", json=_patient())
        assert r.status_code == 201, r.text
        pid = r.json()["id"]
        assert fhir.get("/Patient", params={"name": FAMILY}).json()["total"] == 1
        ident = f"{NATIONAL_ID_SYSTEM}|{NATIONAL_ID}"
        assert fhir.get("/Patient", params={"identifier": ident}).json()["total"] == 1
        assert fhir.get(f"/Patient/{pid}/$everything").status_code == 200
        bad = fhir.post("/Patient", json=_patient(birthDate=f"{GIVEN}-{NATIONAL_ID}"))
        assert bad.status_code in (400, 422)
        assert fhir.get("/Patient", params={"nickname": FAMILY}).status_code == 400
        assert fhir.put(f"/Patient/{pid}", json=_patient(gender=FAMILY)).status_code in (400, 422)
        refused = httpx.post(
            f"{node.base_url}/auth/token",
            data={"grant_type": "password", "username": f"{GIVEN} {FAMILY}", "password": "x"},
        )
        assert refused.status_code in (400, 401)

        # --- the consent registry: the patient by pseudonym -------------------------------
        key = load_or_create_linkage_key(node_dir / "linkage.key")
        pseudo = pseudonym(key, NATIONAL_ID)
        registry = ConsentClient(consent_url, load_org(orgs["org-node"]))
        code = registry.create_enrolment_code(pseudo)["code"]
        enrol = httpx.post(f"{consent_url}/enrol", json={"code": code, "password": "pw-123456789"})
        assert enrol.status_code == 201
        assert not registry.decide(pseudo, "org-peer", "TREAT", ["Condition"]).permit
        bad_login = httpx.post(
            f"{consent_url}/auth/patient-token",
            data={"username": f"{GIVEN}.{FAMILY}", "password": NATIONAL_ID},
        )
        assert bad_login.status_code in (400, 401)
        registry.close()

        # --- the coordinator refuses an envelope about the patient (no consent) ------------
        creds = load_org(orgs["org-node"])
        header = EnvelopeHeader.new(
            kind="referral", sender="org-node", recipient="org-peer", patient_pseudonym=pseudo
        )
        # bound to the envelope as a node does before sealing: a deny, which the coordinator's
        # recheck by envelope id finds
        registry = ConsentClient(consent_url, load_org(orgs["org-node"]))
        bound = registry.decide(
            pseudo, "org-peer", "TREAT", ["Patient"], envelope_id=header.envelope_id
        )
        assert not bound.permit
        registry.close()
        payload = json.dumps(_patient()).encode()
        sealed = seal_to(
            header, payload, sender=creds,
            recipient_encryption_cert_pem=load_org(orgs["org-peer"]).encryption_cert_pem,
        )  # fmt: skip
        with ExchangeClient(f"127.0.0.1:{coordinator.extra['ports']['grpc']}", creds) as client:
            with pytest.raises(grpc.RpcError) as info:
                client.send(sealed)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED

        # --- metrics ------------------------------------------------------------------------
        node_metrics = httpx.get(f"{node.base_url}/metrics").text
        assert (
            'ipjms_node_http_requests_total{method="POST",route="/fhir/{rtype}",status="201"}'
            in node_metrics
        )
        consent_metrics = httpx.get(f"{consent_url}/metrics").text
        assert 'route="/fhir/Consent/$decide",status="200"' in consent_metrics
        coord_metrics = httpx.get(f"{coordinator.base_url}/metrics").text
        assert (
            'ipjms_coordinator_grpc_requests_total{code="PERMISSION_DENIED",method="Send"} 1.0'
            in coord_metrics
        )
        assert "# TYPE ipjms_coordinator_queue_envelopes gauge" in coord_metrics
        for text in (node_metrics, consent_metrics, coord_metrics):
            assert FAMILY not in text and NATIONAL_ID not in text and pseudo not in text
    finally:
        for service in reversed(services):
            service.stop()
    # --- logs: after a clean shutdown, so everything is flushed ---------------------------
    seen = {s.name: _json_lines(s) for s in services}
    assert {e["service"] for e in seen["node"]} == {"node"}
    assert any("serving on" in str(e["msg"]) for e in seen["node"])
    assert any("token request refused" in str(e["msg"]) for e in seen["node"])
    assert any("send refused" in str(e["msg"]) for e in seen["coordinator"])
    assert seen["consent"], "the consent registry logged nothing"
