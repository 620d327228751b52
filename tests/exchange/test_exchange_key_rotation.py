"""Issue 23: the consent registry after the pseudonymisation authority rotates its key.

A patient's consents stay under the pseudonym they enrolled with (``v1.…``). After
``rotate-key`` a node's current pseudonym for them is ``v2.…``, which the registry has never
seen. The node now offers, with each consent question, the patient's pseudonym under every
older key version the authority still holds — its own OPRF evaluations of the identifier it
holds, kept in its pseudonym store — and the registry decides under the one the patient is known
by, storing no link (``consent/known_by.py``). All on real processes: registry, authority,
coordinator and two nodes, the authority restarted with a rotated key and the nodes restarted.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from exchange_net import (
    NODE_ORGS,
    Region,
    bare_patient_bundle,
    patient_bundle,
    seed,
    start_region,
    wait_for,
)
from sqlalchemy import select

from consent.schema import envelope_questions
from coordinator.schema import locator
from deploy.demo.pseudonym_authority import BULK_LOAD_BUDGET
from deploy.launcher import start_service
from federated.cohort import ConsentEligibility
from node.identity import NATIONAL_ID_SYSTEM
from servicekit.storage import make_engine, sqlite_url
from trust.pseudonym_keys import retire, rotate

NID, NAME = "ROT-1951-0101", "Amalia Schwanengesang"  # consented before the rotation
NID_NONE, NAME_NONE = "ROT-1952-0202", "Bruno Ohnezustimmung"  # never consented
NID_VICTIM = "ROT-1953-0303"  # a patient of clinic B's, consented before the rotation
NID_LATE = "ROT-1954-0404"  # consented before the rotation; clinic B meets them only after it
CLASSES = ["Patient", "Condition", "Observation", "ServiceRequest"]


def _restart_authority(region: Region, *, rotate_key: bool = False, retire_v: int = 0) -> None:
    """Stop the authority, rotate (or retire) its key like ``ipjms pseudonym rotate-key``, and
    start it again on the same port (the nodes know its address)."""
    svc = region.pseudonym_service
    assert svc is not None
    svc.stop()
    keys = region.root / "pseudonym" / "oprf-keys"
    if rotate_key:
        rotate(keys)
    if retire_v:
        retire(keys, retire_v)
    port = svc.base_url.rsplit(":", 1)[1]
    clients = [a for org in NODE_ORGS for a in ("--client", org)]
    region.pseudonym_service = start_service(
        "pseudonym",
        ["pseudonym", "serve", "--data-dir", str(region.root / "pseudonym"), "--port", port,
         "--ca-dir", str(region.pki.ca_dir), "--org-id", "authority", *clients],
        base_url=f"http://127.0.0.1:{port}", log_dir=region.root / "logs",
        ports_dir=region.root / "pseudonym", env=BULK_LOAD_BUDGET,
    )  # fmt: skip


def _grant(region: Region, pseudo: str, grants: dict[str, list[str]]) -> dict[str, str]:
    headers = region.patient_token(pseudo)
    region.grant(headers, pseudo, grants)
    return headers


@pytest.fixture(scope="module")
def region(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Region]:
    net = start_region(
        pki, tmp_path_factory.mktemp("rotation"),
        nodes=(("hosp-a", "tertiary"), ("clinic-b", "community")),
    )  # fmt: skip
    try:
        a, b = net.nodes["hosp-a"], net.nodes["clinic-b"]
        seed(a, patient_bundle(NID, name=NAME))
        seed(a, patient_bundle(NID_NONE, name=NAME_NONE))
        seed(a, patient_bundle(NID_LATE, name="Carla Spaetkommer"))
        # clinic B holds the consented patient too (its own record), for the pull
        seed(b, bare_patient_bundle("b-local-1", NID))
        v1 = net.pseudonym(NID)
        victim_v1 = net.pseudonym(NID_VICTIM)
        assert v1.startswith("v1.") and victim_v1.startswith("v1.")
        _grant(net, v1, {"clinic-b": CLASSES, "hosp-a": CLASSES})
        _grant(net, victim_v1, {"clinic-b": CLASSES, "hosp-a": CLASSES})
        _grant(net, net.pseudonym(NID_LATE), {"clinic-b": CLASSES, "hosp-a": CLASSES})
        assert a.post("/exchange/publish", {}).status_code == 200  # the locator holds A's v1
        # the authority rotates its key (v2 current, v1 still held); the nodes restart
        _restart_authority(net, rotate_key=True)
        for node in (a, b):
            node.stop()
            node.restart()
        seed(b, bare_patient_bundle("b-late-1", NID_LATE))  # B meets this patient only now
        net.v1 = v1  # type: ignore[attr-defined]
        net.victim_v1 = victim_v1  # type: ignore[attr-defined]
        yield net
    finally:
        net.stop()


def _refer(a: Any, nid: str, reason: str) -> httpx.Response:
    """Hospital A refers its patient ``nid`` to clinic B."""
    body = {"kind": "referral", "patient": f"Patient/p-{nid}", "recipient": "clinic-b",
            "reason": reason}  # fmt: skip
    return a.post("/exchange/requests", body)


def _inbox(node: Any, envelope_id: str) -> list[dict[str, Any]]:
    return [e for e in node.get("/exchange/inbox")["envelopes"] if e["envelope_id"] == envelope_id]


def test_a_referral_after_a_rotation_is_decided_under_the_enrolled_pseudonym_and_crosses(
    region: Region,
) -> None:
    a, b = region.nodes["hosp-a"], region.nodes["clinic-b"]
    v1 = region.v1  # type: ignore[attr-defined]
    v2 = region.pseudonym(NID)
    assert v2.startswith("v2.") and v2 != v1
    with region.consent_client("hosp-a") as registry:
        # the problem: under the current version alone the registry knows no consent
        assert not registry.decide(v2, "clinic-b", "TREAT", ["Condition"]).permit
        # offered the older version, it decides under the one the patient is known by
        d = registry.decide(v2, "clinic-b", "TREAT", ["Condition"], candidates=[v1])
        assert d.permit and d.patient == v1
    r = _refer(a, NID, "follow-up after the key rotation")
    assert r.status_code == 201, r.text
    sent = r.json()
    assert sent["state"] == "sent"  # the coordinator's $recheck (by envelope id) permitted it
    assert set(sent["classes"]) == {"Patient", "Condition", "Observation", "ServiceRequest"}

    def imported() -> list[dict[str, Any]]:
        return [e for e in _inbox(b, sent["envelope_id"]) if e["outcome"] == "imported"]

    wait_for(imported, what="the referral imported at clinic B")
    # B linked it to its own record of the patient (same national identifier)
    assert imported()[0]["patient_id"] == "b-local-1"
    # the question the coordinator's $recheck (by envelope id) decided is kept under v1
    engine = make_engine(sqlite_url(region.root / "consent", "consent"))
    with engine.connect() as conn:
        kept = conn.execute(
            select(envelope_questions.c.patient).where(
                envelope_questions.c.envelope_id == sent["envelope_id"]
            )
        ).scalar_one()
    engine.dispose()
    assert kept == v1
    # the patient without any consent is still refused, before anything is sent
    r = _refer(a, NID_NONE, "no consent")
    assert r.status_code == 403, r.text


def test_a_pull_after_a_rotation_finds_the_holder_and_is_answered(region: Region) -> None:
    """B's lookup is decided under the enrolled (v1) pseudonym, so the lookup, the coordinator's
    re-check by lookup id and the record queries all name v1 — which A published before the
    rotation — and A's answer is decided under v1 too (its own candidates)."""
    b = region.nodes["clinic-b"]
    r = b.post("/exchange/pulls", {"patient": "Patient/b-local-1"})
    assert r.status_code == 200, r.text
    pulled = r.json()
    assert pulled["holders"] == ["hosp-a"]

    def answered() -> list[dict[str, Any]]:
        return [
            e
            for e in b.get("/exchange/inbox")["envelopes"]
            if e["kind"] == "record-answer" and e["patient_id"] == "b-local-1"
        ]

    wait_for(answered, what="A's record answer at B")
    assert answered()[0]["outcome"] == "imported"


def test_a_holder_publishes_only_the_current_version_so_the_locator_pairs_nothing(
    region: Region,
) -> None:
    """Clinic B has known this patient only since the rotation, and learnt their v1 pseudonym
    from A's referral. It publishes the current (v2) pseudonym alone: publishing the v1 one too
    would put a pair of new pseudonyms of one patient into the same publish, and the
    coordinator could link the two key versions. The price, stated in docs/architecture.md:
    A's pull, decided under v1 (the consents are there), does not find B."""
    a, b = region.nodes["hosp-a"], region.nodes["clinic-b"]
    # A refers the patient to B first: decided under v1, so B's import maps v1 to its record —
    # B now holds both versions of this patient, and must still publish the current one alone
    r = _refer(a, NID_LATE, "follow-up at the clinic")
    assert r.status_code == 201, r.text
    envelope_id = r.json()["envelope_id"]
    wait_for(
        lambda: [e for e in _inbox(b, envelope_id) if e["outcome"] == "imported"],
        what="the referral imported at clinic B",
    )
    assert b.post("/exchange/publish", {}).status_code == 200
    current, older = region.pseudonymiser.candidates((NATIONAL_ID_SYSTEM, NID_LATE))
    assert (current[:3], older[:3]) == ("v2.", "v1.")
    engine = make_engine(sqlite_url(region.coordinator.data_dir, "coordinator"))
    with engine.connect() as conn:
        held = set(
            conn.execute(
                select(locator.c.patient_pseudonym).where(locator.c.org_id == "clinic-b")
            ).scalars()
        )
    engine.dispose()
    assert current in held and older not in held
    r = a.post("/exchange/pulls", {"patient": f"Patient/p-{NID_LATE}"})
    assert r.status_code == 200, r.text
    assert r.json()["holders"] == []


def test_research_eligibility_after_a_rotation_finds_consent_under_the_enrolled_version(
    region: Region,
) -> None:
    """The federated cohort's check (``federated/cohort.ConsentEligibility``) offers the
    patient's held older pseudonyms too, so a consent recorded before the rotation still
    counts (before, it asked under v2 alone: eligible patients were left out). A patient
    without consent stays out."""

    def patient(nid: str) -> dict[str, Any]:
        return {"identifier": [{"system": NATIONAL_ID_SYSTEM, "value": nid}]}

    with region.consent_client("hosp-a") as registry:
        check = ConsentEligibility(
            registry, region.pseudonymiser, "clinic-b", purpose="TREAT", classes=("Condition",)
        )
        assert check.eligible(patient(NID))
        assert not check.eligible(patient(NID_NONE))
        # under the current version alone, as before this change: not eligible
        assert not registry.decide(region.pseudonym(NID), "clinic-b", "TREAT", ["Condition"]).permit


def test_an_enrolment_code_after_a_rotation_reaches_the_existing_account(region: Region) -> None:
    a = region.nodes["hosp-a"]
    r = a.post("/consent/enrolment-code", {"patient": f"Patient/p-{NID}"})
    assert r.status_code == 201, r.text
    assert r.json()["pseudonym"] == region.v1  # type: ignore[attr-defined]
    r = a.post("/consent/enrolment-code", {"patient": f"Patient/p-{NID_NONE}"})
    assert r.status_code == 201, r.text
    assert r.json()["pseudonym"].startswith("v2.")  # never enrolled: the current version


def test_a_listed_pseudonym_directs_only_the_callers_own_question_and_links_nothing(
    region: Region,
) -> None:
    """The registry cannot verify that candidates are the caller's own evaluations (it cannot
    compute the OPRF). What holds instead, shown here: a question listing another patient's
    pseudonym is answered exactly as a question asked under that pseudonym directly — which any
    organisation may already ask — is audited in *that* patient's ledger under the caller's
    name, and leaves nothing behind: no later question (the caller's or anyone's) under the
    caller's own pseudonym reaches that patient's consents, and no enrolment code for it
    reaches that patient's account. The node itself offers only its own evaluations of the
    identifier of the patient it is asked about (``node/exchange/egress.older_pseudonyms``)."""
    victim_v1 = region.victim_v1  # type: ignore[attr-defined]
    own = region.pseudonym(NID_NONE)  # clinic B's "own patient", no consent anywhere
    with region.consent_client("clinic-b") as b_registry:
        listed = b_registry.decide(own, "hosp-a", "TREAT", ["Condition"], candidates=[victim_v1])
        direct = b_registry.decide(victim_v1, "hosp-a", "TREAT", ["Condition"])
        assert (listed.permit, listed.patient, listed.classes) == (
            direct.permit, direct.patient, direct.classes,
        )  # fmt: skip
        assert listed.patient == victim_v1
        # nothing was stored: the caller's own pseudonym alone still has no consent
        assert not b_registry.decide(own, "hosp-a", "TREAT", ["Condition"]).permit
    with region.consent_client("hosp-a") as a_registry:
        assert not a_registry.decide(own, "clinic-b", "TREAT", ["Condition"]).permit
        code = a_registry.create_enrolment_code(own)
        assert code["patient"] == own  # not the victim's account
        # the registry's constraints: one candidate per key version, OPRF pseudonyms only
        for bad in ([own], [victim_v1, region.v1], ["not-a-pseudonym"]):  # type: ignore[attr-defined]
            with pytest.raises(Exception, match="400"):
                a_registry.decide(own, "clinic-b", "TREAT", ["Condition"], candidates=bad)
    # the victim sees clinic B's question in their own disclosure list
    victim = region.patient_token(victim_v1)
    r = httpx.get(
        f"{region.consent_url}/patients/me/disclosures",
        params={"include_refused": "true"}, headers=victim, timeout=30,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    assert "clinic-b" in r.text


def test_a_retired_version_is_neither_asked_nor_used(region: Region) -> None:
    """``retire-key`` deletes v1: nodes no longer offer it (its consents are then out of reach
    of exchange, fail closed, until the patient enrols again)."""
    a = region.nodes["hosp-a"]
    keys = region.root / "pseudonym" / "oprf-keys"
    backup = region.root / "oprf-keys-backup"
    shutil.copytree(keys, backup)
    _restart_authority(region, retire_v=1)
    a.stop()
    a.restart()
    try:
        r = _refer(a, NID, "after v1 was retired")
        assert r.status_code == 403, r.text
    finally:  # the key ring restored from its backup, so the module's tests need no order
        shutil.rmtree(keys)
        shutil.copytree(backup, keys)
        shutil.rmtree(backup)
        _restart_authority(region)
        a.stop()
        a.restart()
