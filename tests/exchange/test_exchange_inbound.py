"""The receiving node's import on SQLite and PostgreSQL (no servers): a real sealed envelope is
verified, checked against the consent decision it carries (the clear header declares no classes
and no purpose, issue 23) and imported exactly once; a redelivery changes nothing; content the
decision does not permit and tampering are refused without touching the store."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select

from consent.client import ConsentClient
from consent.decision_token import sign_decision, x5c_of
from node.exchange.client import DirectoryEntry
from node.exchange.context import ExchangeContext
from node.exchange.documents import (
    PSEUDONYM_SYSTEM,
    attach_decision,
    attach_patient,
    pack_document,
    workflow_task,
)
from node.exchange.inbound import handle_envelope
from node.exchange.lifecycle import MIGRATIONS
from node.exchange.tables import inbound, pseudonyms
from node.exchange.workflow import new_request
from node.store import CommitEvent, FhirStore, migrate
from servicekit.storage import make_engine, upgrade_schema
from trust.envelopes import EnvelopeHeader, seal_to
from trust.pki import init_ca, issue_org, revocation_list
from trust.pseudonym import routing_pseudonym
from trust.pseudonymiser import LinkageKeyPseudonymiser
from trust.tokens import SigningKey, key_thumbprint

PSEUDO = "b" * 64


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ca = tmp_path_factory.mktemp("ca")
    init_ca(ca)
    return ca


@pytest.fixture(scope="module")
def creds(ca_dir: Path):  # type: ignore[no-untyped-def]
    orgs = ("hosp-a", "clinic-b", "consent-registry")
    return {org: issue_org(ca_dir, org, out_dir=ca_dir / org) for org in orgs}


@pytest.fixture
def ctx(db_url: str, creds, ca_dir: Path, tmp_path: Path) -> ExchangeContext:  # type: ignore[no-untyped-def]
    engine = make_engine(db_url)
    migrate(engine)
    upgrade_schema(engine, MIGRATIONS)
    c = ExchangeContext(
        org_id="clinic-b",
        org_name="Clinic B",
        store=FhirStore(engine),
        engine=engine,
        creds=creds["clinic-b"],
        client=None,
        # decisions verified against the registry's CA-issued certificate: nothing fetched
        consent=ConsentClient(
            "http://127.0.0.1:9",
            creds["clinic-b"],
            registry_org="consent-registry",
            revoked=lambda: revocation_list(ca_dir),
        ),
        pseudonymiser=LinkageKeyPseudonymiser(b"k" * 32),
        ca_dir=ca_dir,
    )
    a = creds["hosp-a"]
    c._directory["hosp-a"] = DirectoryEntry(
        "hosp-a",
        "Hospital A",
        "tertiary",
        {},
        a.encryption_cert_pem,
        a.signing_cert_pem,
        True,
        False,
    )
    return c


def _decision(creds, envelope_id, classes, *, signer="consent-registry", **claims):  # type: ignore[no-untyped-def]
    """A decision signed like the registry does: its CA-certified key, certificate in x5c."""
    org = creds[signer]
    key = SigningKey(key_thumbprint(org.signing_public_key), org.signing_key, "ES384")
    body = {
        "sub": PSEUDO,
        "requester": "hosp-a",
        "recipient": "clinic-b",
        "purpose": "TREAT",
        "permit": True,
        "classes": sorted(classes),
        "env": envelope_id,
        "req": "r",
        **claims,
    }
    token, _ = sign_decision(key, "http://registry", body, 300, x5c=x5c_of(org.signing_cert_pem))
    return token


def _envelope(
    creds, resources, classes, *, token=None, permitted=None, envelope_id=None, routed=None
):  # type: ignore[no-untyped-def]
    """``classes``: what the decision carried inside permits (unless ``permitted`` says).
    ``routed``: (the regional pseudonym inside, the pair and the patient whose routing pseudonym
    the header carries) — what a node sends; without it the header carries the regional
    pseudonym."""
    doc = pack_document(resources, patient=None, sender="hosp-a", title="t")
    header_pseudonym = PSEUDO
    if routed is not None:
        inside, pair, routed_patient = routed
        attach_patient(doc, inside)
        header_pseudonym = routing_pseudonym(b"k" * 32, routed_patient, *pair)
    envelope_id = envelope_id or str(uuid.uuid4())
    if token is None:
        token = _decision(creds, envelope_id, permitted if permitted is not None else classes)
    if token:
        attach_decision(doc, token)
    header = EnvelopeHeader.new(
        kind="referral",
        sender="hosp-a",
        recipient="clinic-b",
        patient_pseudonym=header_pseudonym,
        envelope_id=envelope_id,
    )
    return seal_to(
        header,
        json.dumps(doc).encode(),
        sender=creds["hosp-a"],
        recipient_encryption_cert_pem=creds["clinic-b"].encryption_cert_pem,
    )


COND = {
    "resourceType": "Condition",
    "id": "c9",
    "subject": {"reference": "Patient/p"},
    "code": {"text": "heart failure"},
}
PROC = {
    "resourceType": "Procedure",
    "id": "x9",
    "status": "completed",
    "subject": {"reference": "Patient/p"},
    "code": {"text": "echo"},
}


def _inbound_rows(ctx: ExchangeContext) -> int:
    with ctx.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(inbound)).scalar_one())


def test_import_once_then_redelivery_changes_nothing(ctx: ExchangeContext, creds) -> None:  # type: ignore[no-untyped-def]
    sealed = _envelope(creds, [COND], ("Condition",))
    first = handle_envelope(ctx, sealed.to_bytes())
    assert first.imported, first.detail
    counts = ctx.store.counts()
    assert counts["Condition"] == 1 and counts["Provenance"] == 1 and counts["Patient"] == 1
    condition = ctx.store.search("Condition", []).resources[0]
    version = condition["meta"]["versionId"]
    again = handle_envelope(ctx, sealed.to_bytes())
    assert again.imported and "already processed" in again.detail
    assert ctx.store.counts() == counts
    assert ctx.store.read("Condition", condition["id"])["meta"]["versionId"] == version
    assert _inbound_rows(ctx) == 1


def test_unpermitted_classes_rejected_and_nothing_imported(ctx: ExchangeContext, creds) -> None:  # type: ignore[no-untyped-def]
    sealed = _envelope(creds, [COND, PROC], ("Condition",))
    handled = handle_envelope(ctx, sealed.to_bytes())
    assert not handled.imported
    assert "outside the classes its consent decision permits" in handled.detail
    assert "Procedure" not in handled.detail  # the acknowledgement goes to the coordinator
    assert ctx.store.counts().get("Condition", 0) == 0
    assert ctx.store.counts().get("Procedure", 0) == 0
    # the refusal is remembered: a redelivery is refused again, still without importing
    assert not handle_envelope(ctx, sealed.to_bytes()).imported


def test_tampered_envelope_refused(ctx: ExchangeContext, creds) -> None:  # type: ignore[no-untyped-def]
    raw = bytearray(_envelope(creds, [COND], ("Condition",)).to_bytes())
    raw[-80] ^= 0x01  # flip a bit inside the ciphertext/signature
    handled = handle_envelope(ctx, bytes(raw))
    assert not handled.imported
    assert ctx.store.counts().get("Condition", 0) == 0
    assert "heart failure" not in handled.detail  # nothing of the content goes back


def test_timed_records_a_step_only_when_it_succeeds(ctx: ExchangeContext) -> None:
    seen: list[tuple[str, str]] = []
    ctx.observe = lambda direction, phase, seconds: seen.append((direction, phase))
    with ctx.timed("in", "validate"):
        pass
    with pytest.raises(ValueError), ctx.timed("in", "write"):
        raise ValueError("the step failed")
    assert seen == [("in", "validate")]


def test_an_import_times_each_of_its_steps_once_and_a_redelivery_none(  # type: ignore[no-untyped-def]
    ctx: ExchangeContext, creds
) -> None:
    seen: list[tuple[str, str]] = []
    ctx.observe = lambda direction, phase, seconds: seen.append((direction, phase))
    sealed = _envelope(creds, [COND], ("Condition",))
    assert handle_envelope(ctx, sealed.to_bytes()).imported
    steps = [
        "open", "parse", "routing", "proof", "link", "prepare", "validate", "write", "commit",
    ]  # fmt: skip
    assert seen == [("in", step) for step in steps]
    seen.clear()
    assert handle_envelope(ctx, sealed.to_bytes()).imported  # already processed
    assert seen == [("in", "open")]  # authenticated again before the id is looked up


def test_without_a_crl_nothing_is_imported_and_nothing_burnt(  # type: ignore[no-untyped-def]
    ctx: ExchangeContext, creds, tmp_path: Path
) -> None:
    """Attack (issue 23): a receiver without a CRL used to trust every sender ("nothing
    revoked"); it now refuses — and records nothing, so the envelope imports once it can."""
    sealed = _envelope(creds, [COND], ("Condition",))
    configured = ctx.ca_dir
    ctx.ca_dir = tmp_path  # a CA folder whose CRL is missing
    refused = handle_envelope(ctx, sealed.to_bytes())
    assert not refused.imported and "cannot verify the sender" in refused.detail
    assert _inbound_rows(ctx) == 0 and ctx.store.counts().get("Condition", 0) == 0
    ctx.ca_dir = configured
    assert handle_envelope(ctx, sealed.to_bytes()).imported


def test_a_forged_envelope_does_not_burn_the_real_id(ctx: ExchangeContext, creds) -> None:  # type: ignore[no-untyped-def]
    """Attack (issue 23): bytes carrying a real envelope's id but not its sender's signature —
    a forgery, or one met while the directory was unreachable — must not be recorded under that
    id, or the real envelope is refused as "already processed" for ever."""
    real = _envelope(creds, [COND], ("Condition",))
    forged = bytearray(real.to_bytes())
    forged[-80] ^= 0x01  # same header and id, signature/ciphertext no longer verify
    refused = handle_envelope(ctx, bytes(forged))
    assert not refused.imported
    assert _inbound_rows(ctx) == 0
    handled = handle_envelope(ctx, real.to_bytes())
    assert handled.imported, handled.detail
    assert ctx.store.counts()["Condition"] == 1


def test_an_import_commits_once_with_its_events_and_a_refused_one_none(  # type: ignore[no-untyped-def]
    ctx: ExchangeContext, creds
) -> None:
    """An imported referral goes through the store's one write door: its resources are one
    commit (with the record that the envelope was handled), each change one event naming the
    sender; a redelivery, undeclared content or a document the store refuses publish nothing."""
    got: list[CommitEvent] = []
    ctx.store.events.subscribe("care", got.extend)
    assert handle_envelope(ctx, _envelope(creds, [COND], ("Condition",)).to_bytes()).imported
    summary = [(e.resource_type, e.interaction, e.writer, e.commit_seq) for e in got]
    assert summary == [
        ("Patient", "create", "exchange:hosp-a", 1),  # the local patient the pseudonym links to
        ("Composition", "create", "exchange:hosp-a", 1),
        ("Condition", "create", "exchange:hosp-a", 1),
        ("Provenance", "create", "exchange:hosp-a", 1),
    ]
    assert ctx.store.events.read_since(0) == got
    got.clear()
    sealed = _envelope(creds, [COND], ("Condition",))
    assert handle_envelope(ctx, sealed.to_bytes()).imported  # a new envelope, same Condition
    assert [(e.resource_type, e.interaction) for e in got] == [
        ("Composition", "create"),  # each document has its own Composition and Provenance
        ("Provenance", "create"),
    ]  # the Condition was already here
    got.clear()
    assert "already processed" in handle_envelope(ctx, sealed.to_bytes()).detail
    assert not handle_envelope(
        ctx, _envelope(creds, [COND, PROC], ("Condition",)).to_bytes()
    ).imported
    clinical = "http://terminology.hl7.org/CodeSystem/condition-clinical"
    invalid = {
        **COND,
        "id": "c10",
        "clinicalStatus": {"coding": [{"system": clinical, "code": "maybe"}]},
    }
    refused = handle_envelope(ctx, _envelope(creds, [invalid], ("Condition",)).to_bytes())
    assert not refused.imported and "refused by the store" in refused.detail
    assert got == [] and ctx.store.events.head() == 6


def test_a_refused_first_import_leaves_no_patient_behind(  # type: ignore[no-untyped-def]
    ctx: ExchangeContext, creds
) -> None:
    """The local Patient of a patient first met in a document, its pseudonym mapping and the
    document are one commit: a document the store refuses leaves none of them, and the next
    valid one creates the Patient (once) with its contents."""
    clinical = "http://terminology.hl7.org/CodeSystem/condition-clinical"
    invalid = {**COND, "clinicalStatus": {"coding": [{"system": clinical, "code": "maybe"}]}}
    refused = handle_envelope(ctx, _envelope(creds, [invalid], ("Condition",)).to_bytes())
    assert not refused.imported and "refused by the store" in refused.detail
    assert ctx.store.counts() == {} and ctx.store.events.head() == 0
    with ctx.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(pseudonyms)).scalar_one() == 0
    handled = handle_envelope(ctx, _envelope(creds, [COND], ("Condition",)).to_bytes())
    assert handled.imported and handled.detail == "imported 3 resources"  # Composition too
    assert ctx.store.counts() == {"Composition": 1, "Condition": 1, "Patient": 1, "Provenance": 1}
    patient = ctx.store.search("Patient", []).resources[0]
    condition = ctx.store.search("Condition", []).resources[0]
    assert condition["subject"] == {"reference": f"Patient/{patient['id']}"}
    with ctx.engine.connect() as conn:
        mapped = conn.execute(select(pseudonyms.c.pseudonym, pseudonyms.c.patient_id)).all()
        row = conn.execute(
            select(inbound.c.patient_id).where(inbound.c.outcome == "imported")
        ).scalar_one()
    assert [tuple(m) for m in mapped] == [(PSEUDO, patient["id"])] and row == patient["id"]
    assert handle_envelope(ctx, _envelope(creds, [PROC], ("Procedure",)).to_bytes()).imported
    assert ctx.store.counts()["Patient"] == 1  # the next document finds the mapping


def _refused_without_import(ctx: ExchangeContext, sealed, reason: str) -> None:  # type: ignore[no-untyped-def]
    handled = handle_envelope(ctx, sealed.to_bytes())
    assert not handled.imported and reason in handled.detail, handled.detail
    assert ctx.store.counts().get("Condition", 0) == 0


def test_an_envelope_whose_decision_does_not_cover_its_classes_is_refused(  # type: ignore[no-untyped-def]
    ctx: ExchangeContext, creds
) -> None:
    """Attack (issue 23): the registry permitted Condition only; the sender packs Condition and
    Procedure. The clear header declares nothing, so only the signed decision carried inside
    the envelope can catch it."""
    sealed = _envelope(creds, [COND, PROC], ("Condition", "Procedure"), permitted=["Condition"])
    _refused_without_import(ctx, sealed, "outside the classes its consent decision permits")


def test_the_purpose_is_the_decisions_not_the_headers(ctx: ExchangeContext, creds) -> None:  # type: ignore[no-untyped-def]
    """The clear header has no purpose: an emergency (ETREAT) decision bound to the envelope is
    what marks the import as break-glass on this side."""
    envelope_id = str(uuid.uuid4())
    token = _decision(creds, envelope_id, ["Condition"], purpose="ETREAT", break_glass=True)
    sealed = _envelope(creds, [COND], ("Condition",), token=token, envelope_id=envelope_id)
    assert "purpose" not in sealed.header.to_dict()
    handled = handle_envelope(ctx, sealed.to_bytes())
    assert handled.imported, handled.detail
    with ctx.engine.connect() as conn:
        detail = conn.execute(
            select(inbound.c.detail).where(inbound.c.envelope_id == envelope_id)
        ).scalar_one()
    assert detail.startswith("break-glass (ETREAT): ")


def test_a_decision_for_another_envelope_or_patient_or_a_refusal_is_refused(  # type: ignore[no-untyped-def]
    ctx: ExchangeContext, creds
) -> None:
    other = _decision(creds, str(uuid.uuid4()), ["Condition"])  # a real permit, another envelope
    _refused_without_import(ctx, _envelope(creds, [COND], ("Condition",), token=other), "envelope")
    for claims, named in (
        ({"sub": "c" * 64}, "patient"),
        ({"permit": False}, "permit"),
        ({"requester": "clinic-c"}, "requester"),
        ({"recipient": "clinic-c"}, "recipient"),
    ):
        envelope_id = str(uuid.uuid4())
        token = _decision(creds, envelope_id, ["Condition"], **claims)
        sealed = _envelope(creds, [COND], ("Condition",), token=token, envelope_id=envelope_id)
        _refused_without_import(ctx, sealed, f"does not match the envelope: {named}")
    missing = _envelope(creds, [COND], ("Condition",), token="")
    _refused_without_import(ctx, missing, "carries no consent decision")


def test_a_permit_signed_by_a_key_served_over_http_is_refused(  # type: ignore[no-untyped-def]
    ctx: ExchangeContext, creds
) -> None:
    """Attack (issue 23): whoever answers on the registry's plain-HTTP address serves a JWKS
    with its own key and signs a permit; a verifier that trusts the served JWKS accepts it. The
    node trusts only the registry organisation's CA-issued certificate."""
    from consent.decision_token import jwks_of, verify_decision_token

    attacker = SigningKey.generate("ES384")
    attacker = SigningKey(key_thumbprint(attacker.public_key), attacker.private_key, "ES384")
    envelope_id = str(uuid.uuid4())
    claims = {
        "sub": PSEUDO, "requester": "hosp-a", "recipient": "clinic-b", "purpose": "TREAT",
        "permit": True, "classes": ["Condition"], "env": envelope_id, "req": "r",
    }  # fmt: skip
    forged, _ = sign_decision(attacker, "http://registry", claims, 300)
    served_over_http = jwks_of(attacker)
    assert verify_decision_token(forged, served_over_http).permit  # what the JWKS path believes
    doc_env = _envelope(creds, [COND], ("Condition",), token=forged)
    _refused_without_import(ctx, doc_env, "no registry certificate")
    # another organisation's CA-issued signing certificate is no registry either
    by_hospital = _decision(creds, str(uuid.uuid4()), ["Condition"], signer="hosp-a")
    _refused_without_import(
        ctx, _envelope(creds, [COND], ("Condition",), token=by_hospital), "not by the consent"
    )


def test_the_patient_inside_must_match_the_routing_pseudonym(ctx: ExchangeContext, creds) -> None:  # type: ignore[no-untyped-def]
    """The header names the patient by the routing pseudonym of the pair; the regional one is
    inside. A header routed for another pair, or another patient inside, is refused."""
    for routed in (
        (PSEUDO, ("hosp-a", "clinic-c"), PSEUDO),
        ("c" * 64, ("hosp-a", "clinic-b"), PSEUDO),
    ):
        bad = _envelope(creds, [COND], ["Condition"], routed=routed)
        result = handle_envelope(ctx, bad.to_bytes())
        assert not result.imported and "routing pseudonym" in result.detail
    assert ctx.store.search("Condition", []).total == 0
    good = _envelope(creds, [COND], ["Condition"], routed=(PSEUDO, ("clinic-b", "hosp-a"), PSEUDO))
    assert handle_envelope(ctx, good.to_bytes()).imported
    with ctx.engine.connect() as conn:  # linked by the regional pseudonym, not the header's
        known = set(conn.execute(select(pseudonyms.c.pseudonym)).scalars())
    assert PSEUDO in known and good.header.patient_pseudonym not in known


def test_a_misrouted_envelope_whose_import_would_fail_is_still_rejected(  # type: ignore[no-untyped-def]
    ctx: ExchangeContext, creds
) -> None:
    """The routing check runs beside the import's first steps. When one of those fails in a way
    that would leave the envelope to be retried (here a resource whose ``meta`` is a list), a
    routing mismatch is still what refuses it — recorded and answered, as when the check ran
    first — never a poison message delivered again and again."""
    weird = {**COND, "meta": []}
    bad = _envelope(creds, [weird], ["Condition"], routed=(PSEUDO, ("hosp-a", "clinic-c"), PSEUDO))
    result = handle_envelope(ctx, bad.to_bytes())
    assert not result.imported and "routing pseudonym" in result.detail
    assert ctx.store.search("Condition", []).total == 0


BNP = {
    "resourceType": "Observation",
    "id": "bnp",
    "status": "final",
    "code": {"text": "NT-proBNP"},
    "subject": {"reference": "Patient/p"},
    "valueString": "2300 pg/mL",
}


def test_a_first_import_points_contained_references_at_the_new_patient(  # type: ignore[no-untyped-def]
    ctx: ExchangeContext, creds
) -> None:
    """Regression of d5d25de: for a patient first met in a document, references inside
    ``contained`` (which the store's fullUrl rewrite does not enter) were left pointing at the
    new Patient's temporary ``urn:uuid:``; they are ``Patient/<its id>`` like the others."""
    cond = {**COND, "contained": [BNP], "evidence": [{"detail": [{"reference": "#bnp"}]}]}
    sealed = _envelope(creds, [cond], ("Condition", "Observation"))
    handled = handle_envelope(ctx, sealed.to_bytes())
    assert handled.imported, handled.detail
    patient = ctx.store.search("Patient", []).resources[0]
    stored = ctx.store.search("Condition", []).resources[0]
    assert stored["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert stored["contained"][0]["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert stored["evidence"][0]["detail"][0] == {"reference": "#bnp"}
    assert "urn:uuid:" not in json.dumps(stored)
    with ctx.engine.connect() as conn:
        mapped = conn.execute(select(pseudonyms.c.pseudonym, pseudonyms.c.patient_id)).all()
    assert [tuple(m) for m in mapped] == [(PSEUDO, patient["id"])]


def test_a_patient_carrying_the_pseudonym_without_a_mapping_is_the_one_linked(  # type: ignore[no-untyped-def]
    ctx: ExchangeContext, creds
) -> None:
    """A Patient linked earlier (it carries the regional pseudonym) but with no mapping row is
    the patient of the document: no second Patient, and the mapping is recorded."""
    pid = ctx.store.create(
        {
            "resourceType": "Patient",
            "identifier": [{"system": PSEUDONYM_SYSTEM, "value": PSEUDO}],
        }
    ).resource["id"]
    handled = handle_envelope(ctx, _envelope(creds, [COND], ("Condition",)).to_bytes())
    assert handled.imported, handled.detail
    assert ctx.store.counts()["Patient"] == 1
    condition = ctx.store.search("Condition", []).resources[0]
    assert condition["subject"] == {"reference": f"Patient/{pid}"}
    with ctx.engine.connect() as conn:
        mapped = conn.execute(select(pseudonyms.c.pseudonym, pseudonyms.c.patient_id)).all()
    assert [tuple(m) for m in mapped] == [(PSEUDO, pid)]


def test_a_contained_class_must_be_permitted_too(ctx: ExchangeContext, creds) -> None:  # type: ignore[no-untyped-def]
    """A resource the decision does not permit is not let in by being contained in one it
    does: the classes a document carries include those of its contained resources."""
    cond = {**COND, "contained": [BNP], "evidence": [{"detail": [{"reference": "#bnp"}]}]}
    sealed = _envelope(creds, [cond], ("Condition",))
    _refused_without_import(ctx, sealed, "outside the classes its consent decision permits")


def _task_update(creds, document) -> bytes:  # type: ignore[no-untyped-def]
    """A task update sealed like :func:`_envelope` seals a referral, with no consent decision."""
    header = EnvelopeHeader.new(
        kind="task-update",
        sender="hosp-a",
        recipient="clinic-b",
        patient_pseudonym=PSEUDO,
        envelope_id=str(uuid.uuid4()),
    )
    return seal_to(
        header,
        json.dumps(document).encode(),
        sender=creds["hosp-a"],
        recipient_encryption_cert_pem=creds["clinic-b"].encryption_cert_pem,
    ).to_bytes()


def _status_update() -> dict:  # type: ignore[type-arg]
    """The Task of a status update as the node's own sender makes it (workflow fields only)."""
    _sr, task = new_request(
        kind="referral",
        patient_id="p",
        requester="hosp-a",
        requester_name="Hospital A",
        performer="clinic-b",
        reason="suspected heart failure",
        break_glass_reason="unconscious, no record here",
    )
    return workflow_task({**task, "status": "accepted", "statusReason": {"text": "accepted"}})


def test_a_status_update_without_a_decision_carries_only_workflow_fields(  # type: ignore[no-untyped-def]
    ctx: ExchangeContext, creds
) -> None:
    """A task update carrying no data class needs no consent decision (the coordinator lets it
    along an existing exchange), so nothing else may ride on it: a contained resource needs a
    decision; a note, a description, section narrative or another resource is refused — with a
    reason that names none of it — and nothing is imported. The node's own update passes."""
    smuggled = "HIV positive, CD4 120"
    condition = {"resourceType": "Condition", "id": "hiv", "code": {"text": smuggled}}

    def doc(task: dict, *more: dict) -> dict:  # type: ignore[type-arg]
        return pack_document([task, *more], patient=None, sender="hosp-a", title="Task accepted")

    narrative = doc(_status_update())
    narrative["entry"][0]["resource"]["section"].append(
        {"title": "Problems", "text": {"status": "generated", "div": f"<div>{smuggled}</div>"}}
    )
    attempts = {
        "carries no consent decision": [
            doc({**_status_update(), "contained": [condition]}),
            doc(_status_update(), condition),
        ],
        "may carry only workflow fields": [
            doc({**_status_update(), "note": [{"text": smuggled}]}),
            doc({**_status_update(), "description": smuggled}),
            doc({**_status_update(), "input": [{"type": {"text": "x"}, "valueString": smuggled}]}),
            narrative,
            doc(_status_update(), {"resourceType": "Provenance", "id": "pv", "target": []}),
            doc(_status_update(), _status_update()),
        ],
    }
    for reason, documents in attempts.items():
        for document in documents:
            handled = handle_envelope(ctx, _task_update(creds, document))
            assert not handled.imported and reason in handled.detail, handled.detail
            assert smuggled not in handled.detail and "Condition" not in handled.detail
    assert ctx.store.counts() == {}
    task = _status_update()
    handled = handle_envelope(ctx, _task_update(creds, doc(task)))
    assert handled.imported, handled.detail
    stored = ctx.store.search("Task", []).resources[0]
    assert stored["status"] == "accepted" and "note" not in stored
