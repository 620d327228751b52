"""Key rotation of the pseudonymisation authority vs the consent registry (issue 23): the
registry keeps a patient under the pseudonym they enrolled with; after a rotation the enrolling
node registers the new pseudonyms as aliases (``POST /pseudonym-aliases``,
``consent/aliases.py``; ``node/consent_remap.py``) and every entry point resolves them.

The end-to-end test runs the real authority (``ipjms pseudonym serve``, rotated with
``rotate-key`` between two starts) and the registry's app, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from consent_harness import Registry, treat_consent
from sqlalchemy import MetaData, create_engine

from consent.client import ConsentRegistryError
from deploy.launcher import Service, ipjms_command, start_service
from node.consent_remap import remap_patients
from trust.oprf_client import OprfPseudonyms
from trust.pseudonym_store import SqlPseudonymStore, pseudonym_table
from trust.pseudonymiser import OprfPseudonymiser, store_key

NATIONAL = "https://ipjms.example.org/fhir/sid/national-id"


def _p(version: int) -> str:
    return f"v{version}.{secrets.token_hex(32)}"


class _Patients:
    """The part of a node's FHIR store the re-map reads: pages of Patients."""

    def __init__(self, national_ids: list[str]) -> None:
        self.patients = [
            {"resourceType": "Patient", "id": f"p{i}",
             "identifier": [{"system": NATIONAL, "value": v}]}
            for i, v in enumerate(national_ids)
        ]  # fmt: skip

    def search(self, _type: str, params: list[tuple[str, str]]) -> Any:
        q = dict(params)
        start, count = int(q["_offset"]), int(q["_count"])
        page = self.patients[start : start + count]
        return SimpleNamespace(resources=page, total=len(self.patients))


def _aliases(registry: Registry, pairs: Any, org: str = "hosp-a") -> Any:
    token = registry.org(org).access_token()
    return registry.http.post(
        "/pseudonym-aliases",
        json={"pairs": [{"old": o, "new": n} for o, n in pairs]},
        headers={"Authorization": f"Bearer {token}"},
    )


def _remap_entries(registry: Registry) -> list[dict[str, Any]]:
    ledger = registry.http.app.state.ledger  # type: ignore[attr-defined]
    out = []
    for e in ledger.entries():
        subtype = e.event.get("subtype") or [{}]
        if subtype[0].get("code") == "pseudonym-remap":
            out.append(e.event)
    return out


def _decide(registry: Registry, pseudonym: str) -> Any:
    return registry.org("clinic-b").decide(pseudonym, "clinic-b", "TREAT", ["Condition"])


# --- the registry's rules ------------------------------------------------------------------


def test_only_the_enrolling_org_maps_and_a_batch_is_all_or_nothing(registry: Registry) -> None:
    a1, b1, c1 = _p(1), _p(1), _p(1)
    for p in (a1, b1, c1):
        registry.grant(registry.patient_headers(p), treat_consent(p))  # enrolled by hosp-a
    a2, b2, c2 = _p(2), _p(2), _p(2)
    assert not _decide(registry, a2).permit  # before the re-map: nothing applies (fail closed)

    # another organisation cannot alias hosp-a's patient: skipped, nothing written
    r = _aliases(registry, [(a1, a2)], org="clinic-b")
    assert r.status_code == 200 and r.json() == {"mapped": 0, "already": 0, "skipped": 1}
    assert not _decide(registry, a2).permit
    # nor can a patient token, nor no token at all
    patient = registry.patient_headers(a1)
    body = {"pairs": [{"old": a1, "new": a2}]}
    assert registry.http.post("/pseudonym-aliases", json=body, headers=patient).status_code == 403
    assert registry.http.post("/pseudonym-aliases", json=body).status_code == 401

    r = _aliases(registry, [(a1, a2)])
    assert r.status_code == 200 and r.json() == {"mapped": 1, "already": 0, "skipped": 0}
    d = _decide(registry, a2)
    assert d.permit and d.classes == {"Condition"}  # the v1 consent, asked with v2
    assert _aliases(registry, [(a1, a2)]).json() == {"mapped": 0, "already": 1, "skipped": 0}

    # a conflict anywhere in the batch: 409, and nothing of the batch is written
    r = _aliases(registry, [(b1, b2), (c1, a2)])
    assert r.status_code == 409 and r.json()["resourceType"] == "OperationOutcome"
    assert not _decide(registry, b2).permit  # b2 was not mapped either
    # a new pseudonym with registry state of its own (enrolled) cannot become an alias
    r = _aliases(registry, [(b1, c1.replace("v1.", "v3.", 1)), (c1, a1)])
    assert r.status_code == 400  # a1 is not newer than c1
    registry.enrol(c2)
    r = _aliases(registry, [(b1, b2), (c1, c2)])
    assert r.status_code == 409 and not _decide(registry, b2).permit
    assert _aliases(registry, [(b1, b2)]).json()["mapped"] == 1
    assert _decide(registry, b2).permit

    # a chain: v3 of a patient whose v2 is an alias resolves to the enrolled v1
    a3 = _p(3)
    assert _aliases(registry, [(a2, a3)]).json()["mapped"] == 1
    assert _decide(registry, a3).permit
    entries = _remap_entries(registry)
    assert len(entries) == 5  # each accepted batch (200), none of the refused ones
    assert all(a1 not in json.dumps(e) and a2 not in json.dumps(e) for e in entries)


def test_bad_batches_are_refused(registry: Registry) -> None:
    a1 = _p(1)
    registry.enrol(a1)
    for pairs, says in (
        ([(_p(2), a1)], "newer"),  # newer → older
        ([(a1, _p(1))], "newer"),  # the same version
        ([(a1, "ab" * 32)], "key version"),  # an unversioned (linkage-key) pseudonym
        ([(a1, _p(2))] * 501, "at most 500"),
    ):
        r = _aliases(registry, pairs)
        assert r.status_code == 400, r.text
        assert r.json()["resourceType"] == "OperationOutcome" and says in r.text
    token = registry.org("hosp-a").access_token()
    for body in ({"pairs": []}, {"pairs": [{"old": a1}]}, {"pairs": [], "x": 1}, []):
        r = registry.http.post(
            "/pseudonym-aliases", json=body, headers={"Authorization": f"Bearer {token}"}
        )
        assert r.status_code == 400
    assert _remap_entries(registry) == []


def test_every_entry_point_resolves_the_alias(registry: Registry) -> None:
    a1, a2 = _p(1), _p(2)
    creds = registry.enrol(a1)
    headers = registry.patient_headers(a1)
    granted = registry.grant(headers, treat_consent(a1))
    assert _aliases(registry, [(a1, a2)]).json()["mapped"] == 1
    # patient login with the new pseudonym as user name: the enrolled patient
    r = registry.http.post("/auth/patient-token", data={**creds, "username": a2})
    assert r.status_code == 200 and r.json()["patient"] == a1
    # consent search by the new pseudonym finds the v1 consent
    r = registry.http.get("/fhir/Consent", params={"patient": a2}, headers=headers)
    assert r.status_code == 200 and r.json()["total"] == 1
    assert r.json()["entry"][0]["resource"]["id"] == granted["id"]
    # a consent granted naming the new pseudonym is kept under the enrolled one
    made = registry.grant(headers, treat_consent(a2, recipient="clinic-c"))
    assert made["patient"]["identifier"]["value"] == a1
    # an enrolment code for the new pseudonym is one for the enrolled patient
    assert registry.org("hosp-a").create_enrolment_code(a2)["patient"] == a1
    # a disclosure reported under the new pseudonym, covered by a decision asked with it
    d = _decide(registry, a2)
    seq = registry.org("clinic-b").report_disclosure(
        a2, "clinic-b", "TREAT", ["Condition"], decision_token=d.token
    )
    assert seq["covered_by_decision"] is True
    r = registry.http.get("/patients/me/disclosures", headers=headers)
    assert any(i.get("kind") == "reported" for i in r.json()["disclosures"]), r.json()
    # a lookup bound under the new pseudonym is rechecked under the old one, and vice versa
    lookup = "0b7c2a1e-9d7f-4f55-8a5c-1c2d3e4f5a6b"
    bound = registry.org("clinic-b").decide(
        a2, "clinic-b", "TREAT", ["Condition"], lookup_id=lookup
    )
    assert bound.permit
    assert registry.org("coordinator").recheck_lookup(lookup, "clinic-b", a1).permit


# --- end to end: the real authority, rotated; the node's re-map ----------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _authority(tmp: Path, ca: Path, port: int) -> Service:
    return start_service(
        "pseudonym",
        ["pseudonym", "serve", "--data-dir", str(tmp / "svc"), "--port", str(port),
         "--ca-dir", str(ca), "--org-id", "authority", "--client", "hosp-a"],
        base_url=f"http://127.0.0.1:{port}", log_dir=tmp / "logs", ports_dir=tmp / "svc",
    )  # fmt: skip


def test_after_rotate_key_the_enrolling_node_remaps_and_v1_consents_apply_again(
    registry: Registry, tmp_path: Path
) -> None:
    port = _free_port()
    creds = registry.pki.orgs["hosp-a"]
    engine = create_engine(f"sqlite:///{tmp_path / 'node-pseudonyms.db'}")
    metadata = MetaData()
    table = pseudonym_table("node_pseudonyms", metadata)
    metadata.create_all(engine)
    pseudonymiser = OprfPseudonymiser(
        OprfPseudonyms(f"http://127.0.0.1:{port}", creds),
        store=SqlPseudonymStore(engine, table, store_key(creds)),
        version_ttl=0.0,  # the test's node re-reads the current version at once
    )
    enrolled, other = "110101199003071111", "110101199003072222"
    patients = _Patients([enrolled, other])
    node = registry.org("hosp-a")

    svc = _authority(tmp_path, registry.pki.ca_dir, port)
    try:
        v1, other_v1 = pseudonymiser.regional([(NATIONAL, enrolled), (NATIONAL, other)])
        assert v1.startswith("v1.")
        # nothing to re-map before a rotation
        assert remap_patients(patients, pseudonymiser, node).pairs == 0
    finally:
        svc.stop()
    registry.grant(registry.patient_headers(v1), treat_consent(v1))  # enrolled by hosp-a
    assert _decide(registry, v1).permit

    rotated = subprocess.run(
        ipjms_command("pseudonym", "rotate-key", "--data-dir", str(tmp_path / "svc")),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert rotated.returncode == 0, rotated.stderr
    svc = _authority(tmp_path, registry.pki.ca_dir, port)
    try:
        (v2,) = pseudonymiser.regional([(NATIONAL, enrolled)])
        assert v2.startswith("v2.") and pseudonymiser.current_version() == 2
        assert not _decide(registry, v2).permit  # without the re-map: a deny

        report = remap_patients(patients, pseudonymiser, node)
        assert report.current == 2 and report.older == [1] and report.patients == 2
        # both patients' pairs were sent; the one hosp-a never enrolled is skipped there
        assert (report.pairs, report.mapped, report.skipped) == (2, 1, 1)
        d = _decide(registry, v2)
        assert d.permit and d.classes == {"Condition"}  # under the v1 consent
        assert not _decide(registry, pseudonymiser.regional([(NATIONAL, other)])[0]).permit
        again = remap_patients(patients, pseudonymiser, node)  # idempotent, asks no budget
        assert (again.mapped, again.already, again.skipped) == (0, 1, 1)
    finally:
        svc.stop()
    assert other_v1 != v1
    engine.dispose()


def test_a_conflicting_pair_does_not_hold_back_the_others(registry: Registry) -> None:
    """The node's sender: a batch refused for one conflict is sent again pair by pair."""
    from node.consent_remap import RemapReport, _send

    a1, b1, a2, b2 = _p(1), _p(1), _p(2), _p(2)
    registry.enrol(a1)
    registry.enrol(b1)
    registry.enrol(b2)  # b2 enrolled on its own meanwhile: its pair conflicts
    report = RemapReport()
    _send(registry.org("hosp-a"), [(a1, a2), (b1, b2)], report)
    assert (report.mapped, report.conflicts) == (1, 1)
    with pytest.raises(ConsentRegistryError) as refused:
        registry.org("hosp-a").register_aliases([(b1, b2)])
    assert refused.value.status == 409
