"""Pure exchange logic, no servers: the IPS document, the class check, import preparation,
Task workflow, header rules and the coordinator's consent rule."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from fhir.resources.R4B.bundle import Bundle
from hypothesis import given
from hypothesis import strategies as st

from coordinator.consent_gate import ConsentGate
from coordinator.envelope_rules import (
    check_header,
    check_lookup,
    check_size,
    data_recipient,
    read_header,
)
from coordinator.errors import ExchangeError
from node.exchange.documents import (
    EXCHANGE_TAG_SYSTEM,
    TASK_UPDATE_FIELDS,
    carried_classes,
    classes_of,
    filter_by_classes,
    local_id,
    merge_task_update,
    pack_document,
    prepare_import,
    resources_of,
    workflow_only_problem,
    workflow_task,
)
from node.exchange.workflow import check_transition, new_request, task_parties, task_uid
from protos.ipjms.exchange.v1 import exchange_pb2 as pb
from trust.envelopes import EnvelopeHeader

PATIENT = {"resourceType": "Patient", "id": "p1", "name": [{"family": "Doe"}]}
CONDITION = {
    "resourceType": "Condition",
    "id": "c1",
    "subject": {"reference": "Patient/p1"},
    "code": {"text": "heart failure"},
    "encounter": {"reference": "Encounter/e1"},
}
OBS = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "code": {"text": "BNP"},
    "subject": {"reference": "Patient/p1"},
    "hasMember": [{"reference": "Observation/o-missing"}],
}
PROC = {
    "resourceType": "Procedure",
    "id": "x1",
    "status": "completed",
    "subject": {"reference": "Patient/p1"},
}


def test_egress_filter_keeps_only_permitted_types() -> None:
    kept = filter_by_classes([CONDITION, OBS, PROC], {"Condition", "Observation"})
    assert [r["resourceType"] for r in kept] == ["Condition", "Observation"]


def test_contained_resources_count_as_classes_in_and_out() -> None:
    """A resource discloses what it contains: the egress filter keeps it only if those classes
    are permitted too, and the classes a document carries name them (the receiver's check)."""
    with_obs = {**CONDITION, "contained": [{**OBS, "id": "o9"}]}
    assert classes_of(with_obs) == {"Condition", "Observation"}
    assert filter_by_classes([with_obs, PROC], {"Condition", "Procedure"}) == [PROC]
    assert filter_by_classes([with_obs], {"Condition", "Observation"}) == [with_obs]
    task = {"resourceType": "Task", "id": "t", "contained": [{**CONDITION, "id": "c9"}]}
    doc = pack_document([task], patient=None, sender="hosp-a", title="x")
    assert carried_classes(doc) == ["Condition"]  # a structural Task no longer hides it


def test_a_status_update_is_the_tasks_workflow_fields() -> None:
    """What the node's own task update sends is what a receiver accepts without a decision."""
    _sr, task = new_request(
        kind="referral",
        patient_id="p1",
        requester="hosp-a",
        requester_name="A",
        performer="clinic-b",
        reason="follow-up of heart failure",
        break_glass_reason="unconscious",
    )
    task["meta"] = {**task["meta"], "versionId": "2", "lastUpdated": "2026-01-01T00:00:00Z"}
    update = workflow_task({**task, "status": "accepted"})
    assert set(update) <= TASK_UPDATE_FIELDS and update["status"] == "accepted"
    assert "description" not in update and "note" not in update
    assert update["meta"]["security"] == task["meta"]["security"]  # the break-glass label
    doc = pack_document([update], patient=None, sender="hosp-a", title="Task accepted")
    assert carried_classes(doc) == [] and workflow_only_problem(doc) == ()
    full = pack_document([task], patient=None, sender="hosp-a", title="Task accepted")
    assert workflow_only_problem(full) == (
        "Task.code",
        "Task.description",
        "Task.focus",
        "Task.note",
        "Task.priority",
    )


def test_pack_document_is_a_valid_ips_style_document() -> None:
    doc = pack_document([CONDITION, OBS], patient=PATIENT, sender="hosp-a", title="Referral")
    Bundle.model_validate(doc)  # R4B
    composition = doc["entry"][0]["resource"]
    assert composition["resourceType"] == "Composition"
    assert composition["type"]["coding"][0]["code"] == "60591-5"
    assert composition["subject"]["reference"] == doc["entry"][1]["fullUrl"]
    section_refs = [e["reference"] for s in composition["section"] for e in s["entry"]]
    assert len(section_refs) == 2
    assert {r["resourceType"] for r in resources_of(doc)} == {
        "Composition",
        "Patient",
        "Condition",
        "Observation",
    }


def test_carried_classes_are_the_documents_data_types() -> None:
    doc = pack_document([CONDITION, PROC], patient=PATIENT, sender="hosp-a", title="x")
    assert carried_classes(doc) == ["Condition", "Patient", "Procedure"]  # no Composition
    with pytest.raises(ValueError):
        carried_classes({"resourceType": "Patient"})


def test_prepare_import_maps_ids_references_and_provenance() -> None:
    doc = pack_document([CONDITION, OBS], patient=PATIENT, sender="hosp-a", title="x")
    tx = prepare_import(
        doc,
        sender="hosp-a",
        sender_name="Hospital A",
        envelope_id="env-1",
        local_patient_id="local-9",
    )
    Bundle.model_validate(tx)
    by_type = {e["resource"]["resourceType"]: e["resource"] for e in tx["entry"]}
    assert "Patient" not in by_type  # the local patient stands for the shared one
    cond = by_type["Condition"]
    assert cond["id"] == local_id("hosp-a", "Condition", "c1")
    assert cond["subject"] == {"reference": "Patient/local-9"}
    assert "reference" not in cond["encounter"] and "Hospital A" in cond["encounter"]["display"]
    assert "reference" not in by_type["Observation"]["hasMember"][0]
    assert cond["meta"]["source"] == "urn:ipjms:org:hosp-a#c1"
    assert cond["meta"]["tag"][0]["system"] == EXCHANGE_TAG_SYSTEM
    prov = by_type["Provenance"]
    assert prov["id"] == local_id("hosp-a", "Provenance", "env-1")
    assert {t["reference"] for t in prov["target"]} == {
        f"Condition/{cond['id']}",
        f"Observation/{by_type['Observation']['id']}",
        f"Composition/{by_type['Composition']['id']}",
    }
    # deterministic: the same document imports to the same ids (idempotent re-import)
    again = prepare_import(
        doc,
        sender="hosp-a",
        sender_name="Hospital A",
        envelope_id="env-1",
        local_patient_id="local-9",
    )
    assert [e["request"]["url"] for e in again["entry"]] == [
        e["request"]["url"] for e in tx["entry"]
    ]


def test_task_workflow_and_merge() -> None:
    sr, task = new_request(
        kind="referral",
        patient_id="p1",
        requester="hosp-a",
        requester_name="A",
        performer="clinic-b",
        reason="follow-up",
    )
    assert (
        task["status"] == "requested"
        and task_uid(task)
        and task_parties(task) == ("hosp-a", "clinic-b")
    )
    assert task["focus"]["reference"] == f"ServiceRequest/{sr['id']}"
    check_transition("requested", "accepted")
    check_transition("accepted", "in-progress")
    check_transition("in-progress", "completed")
    for bad in [("requested", "completed"), ("completed", "accepted"), ("rejected", "accepted")]:
        with pytest.raises(ValueError):
            check_transition(*bad)
    update = {
        **task,
        "id": "other",
        "status": "accepted",
        "description": "changed",
        "businessStatus": {"text": "accepted"},
    }
    merged = merge_task_update(task, update)
    assert merged["status"] == "accepted" and merged["id"] == task["id"]
    assert merged["description"] == task["description"]  # only workflow fields move


def _record(**kw) -> dict:
    """An envelope header in its wire (record) form, with ``kw`` changed."""
    now = int(time.time())
    base = dict(
        envelope_id="3f2b8c1e-0000-4000-8000-000000000001",
        kind="referral",
        sender="hosp-a",
        recipient="clinic-b",
        patient_pseudonym="a" * 64,
        created_at=now,
        expires_at=now + 3600,
    )
    base.update(kw)
    return base


def _header(**kw) -> EnvelopeHeader:
    return EnvelopeHeader.from_record(_record(**kw))


def _received(**kw) -> None:
    """What the coordinator does with a Send's clear header: read it, then check it."""
    message = pb.EnvelopeHeader(**_record(**kw))
    check_header(read_header(message), caller="hosp-a", now=time.time(), max_ttl=30 * 86400)


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"kind": "gossip"}, "INVALID_ARGUMENT"),
        ({"kind": "Not A Kind"}, "INVALID_ARGUMENT"),
        ({"sender": "clinic-c"}, "PERMISSION_DENIED"),
        ({"sender": ""}, "INVALID_ARGUMENT"),
        ({"recipient": "hosp-a"}, "INVALID_ARGUMENT"),
        ({"recipient": ""}, "INVALID_ARGUMENT"),
        ({"patient_pseudonym": "Jane Doe"}, "INVALID_ARGUMENT"),
        ({"patient_pseudonym": ""}, "INVALID_ARGUMENT"),
        (
            {"expires_at": int(time.time()) - 1, "created_at": int(time.time()) - 100},
            "FAILED_PRECONDITION",
        ),
        ({"expires_at": int(time.time()) + 10**8}, "INVALID_ARGUMENT"),
        ({"expires_at": 2**62}, "INVALID_ARGUMENT"),  # beyond any datetime
        ({"created_at": 0, "expires_at": 0}, "INVALID_ARGUMENT"),
        (
            {"created_at": int(time.time()) + 3600, "expires_at": int(time.time()) + 7200},
            "INVALID_ARGUMENT",
        ),  # fmt: skip
        ({"envelope_id": "x"}, "INVALID_ARGUMENT"),
        ({"envelope_id": ""}, "INVALID_ARGUMENT"),
    ],
)
def test_header_rules(changes, code) -> None:
    with pytest.raises(ExchangeError) as err:
        _received(**changes)
    assert err.value.code == code
    _received()


def test_every_kind_of_the_one_list_is_routed() -> None:
    """The coordinator accepts exactly trust.envelopes.KINDS; the clear header has no purpose
    and no classes to check (issue 23) — a message that still sends them is read without."""
    from trust.envelopes import KINDS

    for kind in KINDS:
        _received(kind=kind)
    old = pb.EnvelopeHeader(**_record())
    old.MergeFromString(bytes([0x32, 5]) + b"TREAT")  # field 6 (reserved), as an old sender's
    header = read_header(pb.EnvelopeHeader.FromString(old.SerializeToString()))
    assert "TREAT" not in header.canonical().decode()


@given(st.binary(min_size=0, max_size=64))
def test_size_rule(data: bytes) -> None:
    if not data or len(data) > 32:
        with pytest.raises(ExchangeError):
            check_size(data, max_bytes=32)
    else:
        check_size(data, max_bytes=32)


class _NotAsked(Exception):
    status = 404  # the registry has no question stored for the envelope


class _Oracle:
    """The registry as the gate sees it: a recheck by envelope id, sender and data recipient
    (nothing else: the header has no purpose or classes to state)."""

    def __init__(self, permit: bool, *, stored: bool = True) -> None:
        self.stored = stored  # False: no decision was bound to the envelope (sealed by hand)
        self.calls: list[tuple] = []
        self.answer = SimpleNamespace(permit=permit, consent_ids=(), reason="r")

    def decide(self, *args, **kwargs):  # the gate must never ask by the header's pseudonym
        raise AssertionError("the gate asked by pseudonym")

    def recheck(self, envelope_id, sender, recipient):
        self.calls.append((envelope_id, sender, recipient))
        if not self.stored:
            raise _NotAsked()
        return self.answer

    def recheck_lookup(self, lookup_id, sender, patient_pseudonym):
        self.calls.append((lookup_id, sender, patient_pseudonym))
        if not self.stored:
            raise _NotAsked()
        return self.answer


def test_the_gate_rechecks_the_decision_bound_to_the_envelope() -> None:
    h = _header()
    oracle = _Oracle(True)
    assert ConsentGate(oracle).check(h, prior_exchange=lambda: False).permit
    assert oracle.calls == [(h.envelope_id, "hosp-a", "clinic-b")]
    refused = ConsentGate(_Oracle(False)).check(h, prior_exchange=lambda: False)
    assert not refused.permit and "consent refused" in refused.reason
    assert not ConsentGate(None).check(h, prior_exchange=lambda: True).permit  # default deny


def test_no_bound_decision_is_a_deny_never_a_question_by_pseudonym() -> None:
    """Issue 23: the header-pseudonym fallback is gone. An envelope sealed by hand, with no
    decision bound to its id, is refused — whatever the patient's consents say — for every kind
    but a task update, which may still travel along an existing exchange."""
    for kind in ("referral", "consultation", "advice", "record-answer", "record-query"):
        oracle = _Oracle(True, stored=False)
        decision = ConsentGate(oracle).check(_header(kind=kind), prior_exchange=lambda: True)
        assert not decision.permit and not decision.unavailable
        assert "no consent decision was bound to this envelope" in decision.reason
    update = _header(kind="task-update")
    loose = _Oracle(True, stored=False)
    assert ConsentGate(loose).check(update, prior_exchange=lambda: True).permit
    alone = ConsentGate(loose).check(update, prior_exchange=lambda: False)
    assert not alone.permit and "existing exchange" in alone.reason
    # a task update that carries clinical data has a bound decision, and it must permit
    bound = ConsentGate(_Oracle(False)).check(update, prior_exchange=lambda: True)
    assert not bound.permit
    assert ConsentGate(None).check(update, prior_exchange=lambda: True).permit
    assert not ConsentGate(None).check(update, prior_exchange=lambda: False).permit


def test_a_break_glass_readmission_is_marked_and_never_reused() -> None:
    """The registry re-admits its own break-glass grant for the envelope and says so; the gate
    keeps its reason (clinician, grant) and marks the decision break-glass for the audit."""
    oracle = _Oracle(True)
    oracle.answer.break_glass, oracle.answer.reason = True, "by doctor u-1 of hosp-a: ED"
    oracle.answer.epoch = "41"  # even if an epoch came with it
    decision = ConsentGate(oracle).check(_header(), prior_exchange=lambda: False)
    assert decision.permit and decision.break_glass and decision.epoch is None
    assert decision.reason == "break-glass re-admitted: by doctor u-1 of hosp-a: ED"


def test_consent_rule_asks_about_the_party_receiving_data() -> None:
    query = _header(kind="record-query", sender="clinic-b", recipient="hosp-a")
    oracle = _Oracle(True)
    assert ConsentGate(oracle).check(query, prior_exchange=lambda: False).permit
    assert oracle.calls[0][2] == "clinic-b" == data_recipient(query)


def test_a_routing_decision_stands_at_delivery_only_while_consents_are_unchanged() -> None:
    """Issue 19: the registry marks a permit of its $recheck reusable with its consent epoch;
    at delivery the coordinator reuses it only if the epoch has not moved — else it asks again.
    A break-glass envelope is always asked again; no epoch (registry down, a consent period
    ahead, an older registry) means ask again."""
    oracle = _Oracle(True)
    oracle.answer.epoch = "41"
    routed = ConsentGate(oracle).check(_header(), prior_exchange=lambda: False)
    assert routed.permit and routed.epoch == "41"
    assert routed.still_holds("41")
    assert not routed.still_holds("42")  # a consent was written (a revocation, say)
    assert not routed.still_holds(None)  # the epoch could not be asked
    query = ConsentGate(oracle).check(_header(kind="record-query"), prior_exchange=lambda: False)
    assert query.permit and query.epoch is None  # the holder filters: asked again
    oracle.answer.epoch = None  # not reusable (e.g. a consent period will start or end)
    assert not ConsentGate(oracle).check(_header(), prior_exchange=lambda: False).still_holds(None)
    oracle.answer.permit, oracle.answer.epoch = False, "41"
    denied = ConsentGate(oracle).check(_header(), prior_exchange=lambda: False)
    assert not denied.still_holds("41")
    assert ConsentGate(oracle).epoch_now() is None  # this oracle has no epoch to ask


def test_a_lookup_is_checked_on_its_bound_decision_only() -> None:
    """Issue 23 for the record locator: the gate has the registry recheck the decision bound to
    the lookup id, naming the caller and the pseudonym — it has no purpose or class to state;
    nothing bound is a deny (not a registry failure), as is no registry at all."""
    lookup_id, pseudo = "0f8e7b1c-2d3a-4b5c-8d9e-0a1b2c3d4e5f", "ab" * 32
    oracle = _Oracle(True)
    gate = ConsentGate(oracle)
    permitted = gate.check_lookup(patient_pseudonym=pseudo, caller="clinic-b", lookup_id=lookup_id)
    assert permitted.permit
    assert oracle.calls == [(lookup_id, "clinic-b", pseudo)]
    unbound = ConsentGate(_Oracle(True, stored=False)).check_lookup(
        patient_pseudonym=pseudo, caller="clinic-b", lookup_id=lookup_id
    )
    assert not unbound.permit and not unbound.unavailable
    assert "no consent decision was bound to this lookup" in unbound.reason
    refused = ConsentGate(_Oracle(False)).check_lookup(
        patient_pseudonym=pseudo, caller="clinic-b", lookup_id=lookup_id
    )
    assert not refused.permit and "consent refused" in refused.reason
    none = ConsentGate(None).check_lookup(
        patient_pseudonym=pseudo, caller="clinic-b", lookup_id=lookup_id
    )
    assert not none.permit
    with pytest.raises(ExchangeError):  # a lookup without a well-formed lookup id
        check_lookup(pseudo, "")
    check_lookup(pseudo, lookup_id)
