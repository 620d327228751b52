"""Lookup-bound decisions (issue 23 for the record locator): a node binds its registry decision
for a lookup to a fresh lookup id (``$decide`` with ``lookup``), and the coordinator has it
decided again by lookup id, caller and pseudonym (``$recheck`` with ``lookup``) — it never names
a purpose or a class. A lookup's decision is never an envelope's, nor an envelope's a lookup's;
a lookup id binds one question (409 otherwise, as for envelopes)."""

from __future__ import annotations

import uuid

import pytest
from consent_harness import Registry, treat_consent

from consent.client import ConsentRegistryError
from consent.decisions import LOOKUP_SYSTEM

P1 = "d4" * 32
P2 = "d5" * 32


def _raw_recheck(registry: Registry, params: list[dict]) -> object:
    coordinator = registry.org("coordinator")
    return registry.http.post(
        "/fhir/Consent/$recheck",
        json={"resourceType": "Parameters", "parameter": params},
        headers={"Authorization": f"Bearer {coordinator.access_token()}"},
    )


def test_recheck_by_lookup_follows_consent_and_names_no_purpose_or_class(
    registry: Registry,
) -> None:
    headers = registry.patient_headers(P1)
    consent = registry.grant(headers, treat_consent(P1, classes=("Condition", "Observation")))
    registry.grant(registry.patient_headers(P2), treat_consent(P2, classes=("Condition",)))
    lookup = str(uuid.uuid4())
    d = registry.org("clinic-b").decide(
        P1, "clinic-b", "TREAT", ["Condition", "Procedure"], lookup_id=lookup
    )
    assert d.permit and d.lookup_id == lookup and d.envelope_id == ""  # no envelope's token
    coordinator = registry.org("coordinator")
    again = coordinator.recheck_lookup(lookup, "clinic-b", P1)
    assert again.permit and again.consent_ids == () and not again.break_glass
    raw = _raw_recheck(registry, [
        {"name": "lookup", "valueId": lookup},
        {"name": "sender", "valueString": "clinic-b"},
        {"name": "patient", "valueString": P1}])  # fmt: skip
    assert raw.status_code == 200, raw.text  # type: ignore[attr-defined]
    for hidden in (consent["id"], "TREAT", "Condition", "Procedure"):
        assert hidden not in raw.text  # type: ignore[attr-defined]
    assert "epoch" not in raw.text  # type: ignore[attr-defined]  # a lookup is checked each time
    # the coordinator cannot state a purpose or classes for a lookup either
    told = _raw_recheck(registry, [
        {"name": "lookup", "valueId": lookup},
        {"name": "sender", "valueString": "clinic-b"},
        {"name": "patient", "valueString": P1},
        {"name": "class", "valueCode": "Condition"}])  # fmt: skip
    assert told.status_code == 400 and "class" in told.text  # type: ignore[attr-defined]
    # the bound decision is this caller's, for this patient
    other_caller = coordinator.recheck_lookup(lookup, "clinic-c", P1)
    assert not other_caller.permit and "another caller" in other_caller.reason
    other_patient = coordinator.recheck_lookup(lookup, "clinic-b", P2)
    assert not other_patient.permit and "another patient" in other_patient.reason
    # each recheck is in the patient's ledger, naming the lookup and the coordinator
    ledger = registry.http.app.state.ledger  # type: ignore[attr-defined]
    audited = [
        e.event
        for e in ledger.entries(patient_pseudonym=P1)
        if {"system": LOOKUP_SYSTEM, "value": lookup}
        in [x.get("what", {}).get("identifier") for x in e.event["entity"]]
    ]
    assert len(audited) == 4  # the permit (twice) and the two mismatches
    # a revocation applies to the very next lookup
    r = registry.http.post(f"/fhir/Consent/{consent['id']}/$revoke", headers=headers)
    assert r.status_code == 200
    revoked = coordinator.recheck_lookup(lookup, "clinic-b", P1)
    assert not revoked.permit and "Condition" not in revoked.reason


def test_an_unbound_lookup_id_is_404_and_a_denied_lookup_stays_denied(registry: Registry) -> None:
    coordinator = registry.org("coordinator")
    with pytest.raises(ConsentRegistryError) as err:
        coordinator.recheck_lookup(str(uuid.uuid4()), "clinic-b", P1)
    assert err.value.status == 404
    lookup = str(uuid.uuid4())  # clinic C has no consent of P1's
    c = registry.org("clinic-c")
    denied = c.decide(P1, "clinic-c", "TREAT", ["Condition"], lookup_id=lookup)
    assert not denied.permit
    registry.grant(registry.patient_headers(P1), treat_consent(P1, "clinic-c", ("Condition",)))
    later = coordinator.recheck_lookup(lookup, "clinic-c", P1)  # a consent given afterwards
    assert not later.permit and "permitted nothing" in later.reason


def test_a_lookup_decision_is_no_envelope_decision_and_vice_versa(registry: Registry) -> None:
    registry.grant(registry.patient_headers(P1), treat_consent(P1, classes=("Condition",)))
    b, coordinator = registry.org("clinic-b"), registry.org("coordinator")
    lookup, envelope = str(uuid.uuid4()), str(uuid.uuid4())
    assert b.decide(P1, "clinic-b", "TREAT", ["Condition"], lookup_id=lookup).permit
    assert b.decide(P1, "clinic-b", "TREAT", ["Condition"], envelope_id=envelope).permit
    # a record query from clinic B would be rechecked with sender = data recipient = clinic B
    as_envelope = coordinator.recheck(lookup, "clinic-b", "clinic-b")
    assert not as_envelope.permit and "a lookup's" in as_envelope.reason
    assert as_envelope.epoch is None
    as_lookup = coordinator.recheck_lookup(envelope, "clinic-b", P1)
    assert not as_lookup.permit and "an envelope's" in as_lookup.reason
    assert coordinator.recheck(envelope, "clinic-b", "clinic-b").permit  # each its own way
    assert coordinator.recheck_lookup(lookup, "clinic-b", P1).permit
    # nor can an id be re-bound the other way (409, nothing decided)
    ledger = registry.http.app.state.ledger  # type: ignore[attr-defined]
    entries = len(ledger.entries())
    for kw in ({"envelope_id": lookup}, {"lookup_id": envelope}):
        with pytest.raises(ConsentRegistryError) as err:
            b.decide(P1, "clinic-b", "TREAT", ["Condition"], **kw)
        assert err.value.status == 409, kw
    assert len(ledger.entries()) == entries


@pytest.mark.parametrize(
    ("field", "patient", "purpose"),
    [("patient", P2, "TREAT"), ("purpose", P1, "HRESCH")],
)  # another recipient is refused before (403, test_a_lookup_is_bound_only_for_its_caller)
def test_asking_again_for_a_bound_lookup_with_another_question_is_409(
    registry: Registry, field: str, patient: str, purpose: str
) -> None:
    registry.grant(registry.patient_headers(P1), treat_consent(P1, classes=("Condition",)))
    b = registry.org("clinic-b")
    lookup = str(uuid.uuid4())
    assert b.decide(P1, "clinic-b", "TREAT", ["Condition"], lookup_id=lookup).permit
    assert b.decide(P1, "clinic-b", "TREAT", ["Condition"], lookup_id=lookup).permit  # a retry
    with pytest.raises(ConsentRegistryError) as err:
        b.decide(patient, "clinic-b", purpose, ["Condition"], lookup_id=lookup)
    assert err.value.status == 409 and f"another {field}" in str(err.value)
    assert "lookup id" in str(err.value) and "envelope" not in str(err.value)
    with pytest.raises(ConsentRegistryError) as err:  # another organisation cannot take it
        registry.org("clinic-c").decide(P1, "clinic-c", "TREAT", ["Condition"], lookup_id=lookup)
    assert err.value.status == 409
    assert "lookup id" in str(err.value) and "envelope" not in str(err.value)
    assert registry.org("coordinator").recheck_lookup(lookup, "clinic-b", P1).permit


def test_a_lookup_binding_takes_no_envelope_sender_or_pull(registry: Registry) -> None:
    token = registry.org("clinic-b").access_token()
    base = [
        {"name": "patient", "valueString": P1},
        {"name": "recipient", "valueString": "clinic-b"},
        {"name": "purpose", "valueCode": "TREAT"},
        {"name": "class", "valueCode": "Condition"},
        {"name": "lookup", "valueId": str(uuid.uuid4())},
    ]
    for extra, says in (
        ({"name": "envelope", "valueId": str(uuid.uuid4())}, "an envelope or to a lookup"),
        ({"name": "sender", "valueString": "clinic-b"}, "names no sender"),
        ({"name": "pull", "valueId": str(uuid.uuid4())}, "not made under a pull grant"),
    ):
        r = registry.http.post(
            "/fhir/Consent/$decide",
            json={"resourceType": "Parameters", "parameter": [*base, extra]},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 400, (extra, r.text)
        issue = r.json()["issue"][0]  # the refusal names the conflict that was asked for
        assert says in issue["diagnostics"], (extra, issue)
        assert issue["expression"] == [f"Parameters.{extra['name']}"], (extra, issue)
    r = registry.http.post(
        "/fhir/Consent/$decide",
        json={"resourceType": "Parameters", "parameter": [*base[:4],
              {"name": "lookup", "valueId": "not-a-uuid"}]},
        headers={"Authorization": f"Bearer {token}"},
    )  # fmt: skip
    assert r.status_code == 400 and "lookup" in r.text


def _id() -> str:
    return str(uuid.uuid4())


def _ledger_size(registry: Registry) -> int:
    return len(registry.http.app.state.ledger.entries())  # type: ignore[attr-defined]


def _bind_row(registry: Registry, lookup: str, **values: object) -> None:
    """A lookup-bound question as the table may hold it (bound before a check this registry
    makes at ``$decide`` now)."""
    from datetime import UTC, datetime

    from consent.schema import envelope_questions

    row = {
        "envelope_id": lookup, "patient": P1, "requester": "clinic-c", "recipient": "clinic-b",
        "purpose": "TREAT", "classes": '["Condition"]', "permitted": '["Condition"]',
        "break_glass": False, "asked_at": datetime.now(UTC), "bound": "lookup",
    } | values  # fmt: skip
    with registry.http.app.state.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(envelope_questions.insert().values(**row))


def test_a_lookup_is_bound_only_for_its_caller(registry: Registry) -> None:
    """A lookup brings the data to who looks up: clinic C cannot bind a lookup "for clinic-b"
    so that the patient's consent to clinic-b opens C's lookup (403, nothing bound or audited),
    with or without a clinician breaking the glass."""
    registry.grant(registry.patient_headers(P1), treat_consent(P1, classes=("Condition",)))
    c, coordinator = registry.org("clinic-c"), registry.org("coordinator")
    before = _ledger_size(registry)
    for lookup, kw in (
        (str(uuid.uuid4()), {"purpose": "TREAT"}),
        (str(uuid.uuid4()), {"purpose": "ETREAT", "reason": "collapsed, history unknown",
                             "acting_role": "doctor", "acting_user": "u-9"}),
    ):  # fmt: skip
        purpose = kw.pop("purpose")
        with pytest.raises(ConsentRegistryError) as err:
            c.decide(P1, "clinic-b", purpose, ["Condition"], lookup_id=lookup, **kw)
        assert err.value.status == 403 and "recipient" in str(err.value), purpose
        with pytest.raises(ConsentRegistryError) as err:  # nothing was bound to the id
            coordinator.recheck_lookup(lookup, "clinic-c", P1)
        assert err.value.status == 404, purpose
    r = registry.http.post(
        "/fhir/Consent/$decide",
        json={"resourceType": "Parameters", "parameter": [
            {"name": "patient", "valueString": P1},
            {"name": "recipient", "valueString": "clinic-b"},
            {"name": "purpose", "valueCode": "TREAT"},
            {"name": "class", "valueCode": "Condition"},
            {"name": "lookup", "valueId": str(uuid.uuid4())}]},
        headers={"Authorization": f"Bearer {c.access_token()}"},
    )  # fmt: skip
    assert r.status_code == 403 and r.json()["resourceType"] == "OperationOutcome", r.text
    assert _ledger_size(registry) == before  # no decision, no break-glass grant recorded
    # the caller's own lookup is decided as before (clinic-b's is permitted, C's is not)
    own = registry.org("clinic-b").decide(P1, "clinic-b", "TREAT", ["Condition"], lookup_id=_id())
    assert own.permit
    assert not c.decide(P1, "clinic-c", "TREAT", ["Condition"], lookup_id=_id()).permit


def test_a_stored_lookup_for_another_recipient_is_denied_at_recheck(registry: Registry) -> None:
    """A row bound for another recipient than the organisation that looked up (as one bound
    before $decide refused it could be) never opens the lookup: the patient's consent to
    clinic-b does not let clinic C look up."""
    registry.grant(registry.patient_headers(P1), treat_consent(P1, classes=("Condition",)))
    lookup = str(uuid.uuid4())
    _bind_row(registry, lookup)  # C's lookup "for clinic-b"
    again = registry.org("coordinator").recheck_lookup(lookup, "clinic-c", P1)
    assert not again.permit and "another recipient" in again.reason


def test_a_break_glass_lookup_is_readmitted_only_by_a_pull_grant(registry: Registry) -> None:
    """ETREAT: only the clinician's pull grant (data to the organisation that looks up)
    re-admits a lookup; a referral-style grant (data to another organisation) made with the id
    does not, even when the lookup's row names that organisation as recipient."""
    c, coordinator = registry.org("clinic-c"), registry.org("coordinator")
    why = "collapsed, history unknown"
    referral = str(uuid.uuid4())  # C's doctor: break-glass data to clinic-b, with this id
    granted = c.decide(P1, "clinic-b", "ETREAT", ["Condition"], reason=why,
                       acting_role="doctor", acting_user="u-9", envelope_id=referral)  # fmt: skip
    assert granted.permit and granted.break_glass
    # the row as a lookup bound for clinic-b before the fix would hold it (same grant entry)
    with registry.http.app.state.engine.begin() as conn:  # type: ignore[attr-defined]
        from consent.schema import envelope_questions

        conn.execute(
            envelope_questions.update()
            .where(envelope_questions.c.envelope_id == referral)
            .values(bound="lookup")
        )
    denied = coordinator.recheck_lookup(referral, "clinic-c", P1)
    assert not denied.permit and not denied.break_glass, denied.reason
    # a pull grant made with the lookup's id re-admits it
    pull = str(uuid.uuid4())
    assert c.decide(P1, "clinic-c", "ETREAT", ["Condition"], reason=why,
                    acting_role="doctor", acting_user="u-9", lookup_id=pull).permit  # fmt: skip
    readmitted = coordinator.recheck_lookup(pull, "clinic-c", P1)
    assert readmitted.permit and readmitted.break_glass, readmitted.reason


@pytest.mark.parametrize("parameter", [5, True, "x", {}])
def test_a_recheck_whose_parameter_is_no_list_is_400(registry: Registry, parameter: object) -> None:
    before = _ledger_size(registry)
    r = registry.http.post(
        "/fhir/Consent/$recheck",
        json={"resourceType": "Parameters", "parameter": parameter},
        headers={"Authorization": f"Bearer {registry.org('coordinator').access_token()}"},
    )
    assert r.status_code == 400, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert _ledger_size(registry) == before


def test_decide_takes_no_sender_an_envelope_is_re_checked_with_recheck(registry: Registry) -> None:
    """The coordinator re-checks an envelope's decision with ``$recheck``; ``$decide`` with a
    ``sender`` (its pre-version-3 way, which re-admitted break-glass grants) is refused and
    nothing is recorded."""
    token = registry.org("coordinator").access_token()
    ledger_before = _ledger_size(registry)
    r = registry.http.post(
        "/fhir/Consent/$decide",
        json={"resourceType": "Parameters", "parameter": [
            {"name": "patient", "valueString": P1},
            {"name": "recipient", "valueString": "clinic-c"},
            {"name": "purpose", "valueCode": "ETREAT"},
            {"name": "class", "valueCode": "Condition"},
            {"name": "envelope", "valueId": str(uuid.uuid4())},
            {"name": "sender", "valueString": "hosp-a"},
        ]},
        headers={"Authorization": f"Bearer {token}"},
    )  # fmt: skip
    assert r.status_code == 400, r.text
    issue = r.json()["issue"][0]
    assert "$recheck" in issue["diagnostics"] and issue["expression"] == ["Parameters.sender"]
    assert _ledger_size(registry) == ledger_before


def test_a_lookup_binding_expires_with_its_decision_and_is_purged(registry: Registry) -> None:
    """A lookup id's binding lives as long as the decision bound to it (the decision ttl,
    ``consent.decisions.binding_lifetime``): a re-check after that is a deny saying it expired,
    and the row is purged when a later question is bound. An envelope bound at the same moment
    lives on (an envelope carrying its token may still be delivered) until its own lifetime."""
    from datetime import UTC, datetime, timedelta

    from consent.decisions import PURGE_EVERY, binding_lifetime
    from consent.schema import envelope_questions

    service = registry.http.app.state.decisions  # type: ignore[attr-defined]
    t0 = datetime.now(UTC)
    now = [t0]
    service.clock = lambda: now[0]
    registry.grant(registry.patient_headers(P1), treat_consent(P1, classes=("Condition",)))
    b, coordinator = registry.org("clinic-b"), registry.org("coordinator")
    lookup, envelope = _id(), _id()
    assert b.decide(P1, "clinic-b", "TREAT", ["Condition"], lookup_id=lookup).permit
    assert b.decide(P1, "clinic-b", "TREAT", ["Condition"], envelope_id=envelope).permit
    life = binding_lifetime("lookup", service.ttl)
    assert life == timedelta(seconds=service.ttl) == timedelta(seconds=300)

    now[0] = t0 + life  # the last moment of the decision's lifetime
    assert coordinator.recheck_lookup(lookup, "clinic-b", P1).permit
    now[0] = t0 + life + timedelta(seconds=1)
    late = coordinator.recheck_lookup(lookup, "clinic-b", P1)
    assert not late.permit and not late.break_glass
    assert "expired" in late.reason and f"{service.ttl} s" in late.reason, late.reason
    # the kind is still told first: an expired lookup's id is no envelope's
    as_envelope = coordinator.recheck(lookup, "clinic-b", "clinic-b")
    assert not as_envelope.permit and "a lookup's, not an envelope's" in as_envelope.reason
    assert coordinator.recheck(envelope, "clinic-b", "clinic-b").permit

    def bound_ids() -> set[str]:
        with registry.http.app.state.engine.connect() as conn:  # type: ignore[attr-defined]
            return {r[0] for r in conn.execute(envelope_questions.select())}

    # the next binding purges what expired (the lookup), not what lives on (the envelope)
    now[0] = t0 + life + PURGE_EVERY + timedelta(seconds=1)
    fresh = _id()
    assert b.decide(P1, "clinic-b", "TREAT", ["Condition"], lookup_id=fresh).permit
    assert bound_ids() == {envelope, fresh}
    with pytest.raises(ConsentRegistryError) as err:
        coordinator.recheck_lookup(lookup, "clinic-b", P1)
    assert err.value.status == 404 and "expired" in err.value.message

    # the envelope's binding ends when an envelope carrying its token can no longer be delivered
    env_life = binding_lifetime("envelope", service.ttl)
    now[0] = t0 + env_life + timedelta(seconds=1)
    gone = coordinator.recheck(envelope, "clinic-b", "clinic-b")
    assert not gone.permit and "expired" in gone.reason, gone.reason
    assert service.purge_expired_bindings(force=True) == 2  # the envelope and the fresh lookup
    assert bound_ids() == set()
