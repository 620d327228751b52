"""Issue 23 after ``ipjms pseudonym rotate-key``: a node on the authority's OPRF.

The registry's patient token carries the pseudonym the patient enrolled with (``v1.…``, the
canonical one, forever), while the node's current pseudonyms are ``v2.…``. The node matches the
token's pseudonym under the key version it names (``node/patient/links.py``), so a patient whose
link was never saved still reaches their own record, and nobody else's — against the real
registry process and the real authority process (rotated between two starts on one port)."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from patient.region_harness import (
    FAST_HASHER,
    PASSWORD,
    PATIENT_PASSWORD,
    doctor_headers,
    sign_in,
)
from sqlalchemy import select

from deploy.launcher import Service, ipjms_command, start_service
from node.app import create_app
from node.identity import NATIONAL_ID_SYSTEM
from node.patient.tables import patient_links
from node.settings import load_settings
from trust.oprf_client import OprfPseudonyms
from trust.pki import init_ca, issue_org, load_org
from trust.tokens import jwk_thumbprint, load_or_create_signing_key

ORG = "org-rot"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _authority(root: Path, port: int) -> Service:
    return start_service(
        "pseudonym",
        ["pseudonym", "serve", "--data-dir", str(root / "svc"), "--port", str(port),
         "--ca-dir", str(root / "ca"), "--org-id", "authority", "--client", ORG],
        base_url=f"http://127.0.0.1:{port}", log_dir=root / "logs", ports_dir=root / "svc",
    )  # fmt: skip


@dataclass
class Enrolled:
    patient_id: str
    username: str
    v1: str  # the pseudonym enrolled with (before the rotation)


@dataclass
class Rotated:
    root: Path
    registry: str
    authority: str
    node: TestClient
    app: Any
    a: Enrolled
    b: Enrolled
    ids: dict[str, str]  # national ids by patient id (a, b and c, whom nobody enrolled)

    @property
    def services(self) -> Any:
        return self.app.state.services

    def token(self, who: Enrolled) -> dict[str, str]:
        return {"Authorization": f"Bearer {sign_in(self.registry, who.username)['access_token']}"}


@pytest.fixture(scope="module")
def rotated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rotated]:
    root = tmp_path_factory.mktemp("rotation")
    init_ca(root / "ca")
    creds_dir = root / "orgs" / ORG
    issue_org(root / "ca", ORG, out_dir=creds_dir)
    port = _free_port()
    authority = _authority(root, port)
    registry = start_service(
        "consent",
        ["consent", "serve", "--data-dir", str(root / "consent"), "--port", "0",
         "--ca-dir", str(root / "ca")],
        base_url="http://127.0.0.1:{http}", log_dir=root / "logs", ports_dir=root / "consent",
        env={"IPJMS_CONSENT_PASSWORD_HASH": "owasp-minimum"},
    )  # fmt: skip
    try:
        key = load_or_create_signing_key(root / "consent" / "keys" / "access-token.pem")
        settings = load_settings(
            root / "node", org_id=ORG, consent_url=registry.base_url,
            org_credentials_dir=creds_dir, pseudonym_url=authority.base_url,
        )  # fmt: skip
        settings = settings.model_copy(
            update={
                "consent": settings.consent.model_copy(
                    update={"patient_key_pins": (jwk_thumbprint(key.public_jwk()),)}
                )
            }
        )
        app = create_app(settings)
        app.state.auth.accounts.hasher = FAST_HASHER
        app.state.auth.accounts.add_user("doctor1", PASSWORD, "doctor")
        with TestClient(app) as node:
            # the test's node re-reads the authority's current version at once (else 300 s)
            app.state.services.pseudonymiser.version_ttl = 0.0
            doctor = doctor_headers(node)
            ids, people = {}, []
            for nid, family in (("NID-R-A", "Alpha"), ("NID-R-B", "Bravo"), ("NID-R-C", "Cee")):
                patient = app.state.store.create(
                    {"resourceType": "Patient", "name": [{"family": family}],
                     "identifier": [{"system": NATIONAL_ID_SYSTEM, "value": nid}]},
                    writer="test",
                ).resource  # fmt: skip
                ids[patient["id"]] = nid
                if family == "Cee":
                    continue  # held here, enrolled by nobody
                r = node.post(
                    "/consent/enrolment-code", json={"patient": patient["id"]}, headers=doctor
                )
                assert r.status_code == 201, r.text
                code = r.json()
                assert code["pseudonym"].startswith("v1.")
                enrolled = httpx.post(
                    f"{registry.base_url}/enrol",
                    json={"code": code["code"], "password": PATIENT_PASSWORD},
                    timeout=120,
                )
                assert enrolled.status_code == 201, enrolled.text
                people.append(
                    Enrolled(patient["id"], enrolled.json()["username"], code["pseudonym"])
                )
            # the node pseudonymised all it holds before the rotation (C too: so what a re-map
            # finds does not depend on which test asked the authority for C's v1 first)
            nids = [(NATIONAL_ID_SYSTEM, nid) for nid in ids.values()]
            assert all(p.startswith("v1.") for p in app.state.services.pseudonymiser.regional(nids))
            authority.stop()
            rotated = subprocess.run(
                ipjms_command("pseudonym", "rotate-key", "--data-dir", str(root / "svc")),
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert rotated.returncode == 0, rotated.stderr
            authority = _authority(root, port)
            yield Rotated(
                root, registry.base_url, authority.base_url, node, app, people[0], people[1], ids
            )
    finally:
        authority.stop()
        registry.stop()


def _links(rotated: Rotated) -> dict[str, str]:
    """The node's remembered pseudonym → Patient links."""
    with rotated.services.engine.connect() as conn:
        rows = conn.execute(select(patient_links.c.pseudonym, patient_links.c.patient_id))
        return {row.pseudonym: row.patient_id for row in rows}


def _v2(rotated: Rotated, who: Enrolled) -> str:
    (v2,) = rotated.services.pseudonymiser.regional(
        [(NATIONAL_ID_SYSTEM, rotated.ids[who.patient_id])]
    )
    return str(v2)


def test_a_v1_token_reaches_its_own_record_after_the_rotation_and_no_other(
    rotated: Rotated,
) -> None:
    node, a, b = rotated.node, rotated.a, rotated.b
    assert rotated.services.pseudonymiser.current_version() == 2
    assert _v2(rotated, a).startswith("v2.") and _v2(rotated, a) != a.v1
    assert not {a.v1, b.v1} & set(_links(rotated))  # no link was saved before the rotation
    token_a, token_b = rotated.token(a), rotated.token(b)
    for who, token in ((a, token_a), (b, token_b)):
        r = node.get(f"/fhir/Patient/{who.patient_id}", headers=token)
        assert r.status_code == 200, r.text
        assert r.json()["id"] == who.patient_id
    # ...and only their own: A's v1 token does not reach B's record, nor B's A's
    for token, other in ((token_a, b), (token_b, a)):
        r = node.get(f"/fhir/Patient/{other.patient_id}", headers=token)
        assert r.status_code in (403, 404), r.text
        r = node.get("/fhir/Patient", params={"_id": other.patient_id}, headers=token)
        assert other.patient_id not in r.text
    saved = _links(rotated)  # what was found is remembered under the v1 pseudonyms
    assert (saved[a.v1], saved[b.v1]) == (a.patient_id, b.patient_id)


def test_a_v1_pseudonym_the_node_never_held_is_asked_of_the_authority_by_number(
    rotated: Rotated,
) -> None:
    """D enrolled under v1 elsewhere (here: a code asked with D's v1, obtained outside the node's
    store); D's record reaches this node only after the rotation. The node's store has no v1
    pseudonym for D: it asks the authority for v1 by number, and D reaches their own record."""
    nid = "NID-R-D"
    creds = load_org(rotated.root / "orgs" / ORG)
    (d_v1,) = OprfPseudonyms(rotated.authority, creds).pseudonyms(
        [(NATIONAL_ID_SYSTEM, nid)], version=1
    )
    assert d_v1.startswith("v1.")
    code = rotated.services.consent.create_enrolment_code(d_v1)["code"]
    r = httpx.post(
        f"{rotated.registry}/enrol", json={"code": code, "password": PATIENT_PASSWORD}, timeout=120
    )
    assert r.status_code == 201, r.text
    patient = rotated.app.state.store.create(
        {"resourceType": "Patient", "identifier": [{"system": NATIONAL_ID_SYSTEM, "value": nid}]},
        writer="test",
    ).resource
    d = Enrolled(patient["id"], r.json()["username"], d_v1)
    token = rotated.token(d)
    r = rotated.node.get(f"/fhir/Patient/{d.patient_id}", headers=token)
    assert r.status_code == 200, r.text
    r = rotated.node.get(f"/fhir/Patient/{rotated.a.patient_id}", headers=token)
    assert r.status_code in (403, 404), r.text
    rotated.app.state.store.delete("Patient", d.patient_id, writer="test")
