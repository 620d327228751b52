"""``$recheck`` (issue 23): the coordinator has a decision bound to an envelope decided again by
envelope id, sender and data recipient alone — it names no patient, purpose or class, and
learns only permit/deny. The registry re-decides the stored question: every class the decision
permitted must still be permitted, for the purpose it was asked for (fail closed)."""

from __future__ import annotations

import uuid

import pytest
from consent_harness import Registry, treat_consent

from consent.client import ConsentRegistryError
from consent.decisions import ENVELOPE_SYSTEM

P1 = "c3" * 32


def test_recheck_by_envelope_follows_consent_and_names_no_patient(registry: Registry) -> None:
    headers = registry.patient_headers(P1)
    consent = registry.grant(headers, treat_consent(P1, classes=("Condition", "Observation")))
    # clinic C is permitted too: the rechecks below that name it are refused because the
    # envelope's question did not, not because consent forbids it
    registry.grant(headers, treat_consent(P1, "clinic-c", ("Condition", "Procedure")))
    envelope = str(uuid.uuid4())
    d = registry.org("hosp-a").decide(
        P1, "clinic-b", "TREAT", ["Condition", "Observation"], envelope_id=envelope
    )
    assert d.permit
    coordinator = registry.org("coordinator")
    again = coordinator.recheck(envelope, "hosp-a", "clinic-b")
    assert again.permit and again.consent_ids == () and not again.break_glass
    raw = registry.http.post(
        "/fhir/Consent/$recheck",
        json={"resourceType": "Parameters", "parameter": [
            {"name": "envelope", "valueId": envelope},
            {"name": "sender", "valueString": "hosp-a"},
            {"name": "recipient", "valueString": "clinic-b"}]},
        headers={"Authorization": f"Bearer {coordinator.access_token()}"},
    )  # fmt: skip
    assert raw.status_code == 200, raw.text
    for hidden in (P1, consent["id"], "TREAT", "Condition", "Observation"):
        assert hidden not in raw.text  # no patient, consent, purpose or class reaches it
    # the coordinator cannot state a purpose or classes: it has none to state
    told = registry.http.post(
        "/fhir/Consent/$recheck",
        json={"resourceType": "Parameters", "parameter": [
            {"name": "envelope", "valueId": envelope},
            {"name": "sender", "valueString": "hosp-a"},
            {"name": "recipient", "valueString": "clinic-b"},
            {"name": "purpose", "valueCode": "TREAT"}]},
        headers={"Authorization": f"Bearer {coordinator.access_token()}"},
    )  # fmt: skip
    assert told.status_code == 400 and "purpose" in told.text
    # the envelope's header must be the question that was asked
    assert not coordinator.recheck(envelope, "hosp-a", "clinic-c").permit
    assert not coordinator.recheck(envelope, "clinic-c", "clinic-b").permit
    # a revocation applies to the very next recheck (the coordinator's check at delivery)
    r = registry.http.post(f"/fhir/Consent/{consent['id']}/$revoke", headers=headers)
    assert r.status_code == 200
    refused = coordinator.recheck(envelope, "hosp-a", "clinic-b")
    assert not refused.permit and "Condition" not in refused.reason
    # each recheck is in the patient's ledger
    ledger = registry.http.app.state.ledger  # type: ignore[attr-defined]
    rechecks = [
        e
        for e in ledger.entries(patient_pseudonym=P1)
        if {"system": ENVELOPE_SYSTEM, "value": envelope}
        in [x["what"].get("identifier") for x in e.event["entity"]]
    ]
    assert len(rechecks) == 5 and ledger.verify().ok  # the five rechecks above


def test_recheck_permits_only_while_every_permitted_class_still_is(registry: Registry) -> None:
    """The stored question keeps the classes the decision permitted: narrowing consent by any
    one of them denies (the envelope may hold it); a class that was never permitted does not
    count; a question that was denied stays denied."""
    p = "e5" * 32
    headers = registry.patient_headers(p)
    wide = registry.grant(headers, treat_consent(p, classes=("Condition", "Observation")))
    coordinator, hosp = registry.org("coordinator"), registry.org("hosp-a")
    partial = str(uuid.uuid4())  # asks for Procedure too: a partial permit
    d = hosp.decide(p, "clinic-b", "TREAT", ["Condition", "Observation", "Procedure"],
                    envelope_id=partial)  # fmt: skip
    assert d.permit and d.classes == {"Condition", "Observation"}
    assert coordinator.recheck(partial, "hosp-a", "clinic-b").permit
    denied = str(uuid.uuid4())  # no consent for research: denied when asked
    assert not hosp.decide(p, "clinic-b", "HRESCH", ["Condition"], envelope_id=denied).permit
    answer = coordinator.recheck(denied, "hosp-a", "clinic-b")
    assert not answer.permit and "permitted nothing" in answer.reason
    # the patient narrows the consent: Observation no longer, Condition still
    registry.grant(headers, treat_consent(p, classes=("Condition",)))
    r = registry.http.post(f"/fhir/Consent/{wide['id']}/$revoke", headers=headers)
    assert r.status_code == 200
    assert hosp.decide(p, "clinic-b", "TREAT", ["Condition"]).permit
    narrowed = coordinator.recheck(partial, "hosp-a", "clinic-b")
    assert not narrowed.permit and narrowed.epoch is None
    assert "Observation" not in narrowed.reason  # the class stays at the registry


def test_recheck_of_an_unknown_envelope_is_404_and_ids_cannot_be_taken_over(
    registry: Registry,
) -> None:
    with pytest.raises(ConsentRegistryError) as err:
        registry.org("coordinator").recheck(str(uuid.uuid4()), "hosp-a", "clinic-b")
    assert err.value.status == 404
    envelope = str(uuid.uuid4())
    registry.org("hosp-a").decide(P1, "clinic-b", "TREAT", ["Condition"], envelope_id=envelope)
    with pytest.raises(ConsentRegistryError) as err:
        registry.org("clinic-c").decide(
            P1, "clinic-c", "TREAT", ["Condition"], envelope_id=envelope
        )
    assert err.value.status == 409


def test_recheck_hands_out_the_consent_epoch_unless_a_consent_period_will_turn(
    registry: Registry,
) -> None:
    """Issue 19: a permit of ``$recheck`` carries the consent epoch read before the consents
    were; every consent written (a grant, a revocation) moves the epoch, which ``$epoch``
    answers — the coordinator's condition for letting its routing decision stand at delivery.
    When one of the patient's consents has a period that will start or end, the answer carries
    no epoch (time alone could change it, and the coordinator is not told when)."""
    import datetime as dt

    from consent.fhir import to_fhir
    from consent.policy import ConsentRecord, Period, Provision

    p2 = "d4" * 32
    coordinator = registry.org("coordinator")
    headers = registry.patient_headers(p2)
    start = coordinator.epoch()
    consent = registry.grant(headers, treat_consent(p2, classes=("Condition",)))
    granted = coordinator.epoch()
    assert int(granted) == int(start) + 1
    envelope = str(uuid.uuid4())
    registry.org("hosp-a").decide(p2, "clinic-b", "TREAT", ["Condition"], envelope_id=envelope)
    answer = coordinator.recheck(envelope, "hosp-a", "clinic-b")
    assert answer.permit and answer.epoch == granted
    ends = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=30)
    limited = Provision(
        "permit",
        actors=frozenset({"clinic-c"}),
        purposes=frozenset({"TREAT"}),
        classes=frozenset({"Condition"}),
        period=Period(None, ends),
    )
    body = to_fhir(ConsentRecord("x", p2, "active", Provision("deny", provisions=(limited,))))
    del body["id"]
    time_limited = registry.grant(headers, body)
    assert coordinator.epoch() != granted
    answer = coordinator.recheck(envelope, "hosp-a", "clinic-b")
    assert answer.permit and answer.epoch is None  # a period ends in 30 days: ask every time
    assert ends.isoformat()[:10] not in str(answer)
    r = registry.http.post(f"/fhir/Consent/{time_limited['id']}/$revoke", headers=headers)
    assert r.status_code == 200
    before = coordinator.recheck(envelope, "hosp-a", "clinic-b")
    assert before.epoch == coordinator.epoch()  # a revoked consent's period turns nothing
    r = registry.http.post(f"/fhir/Consent/{consent['id']}/$revoke", headers=headers)
    assert r.status_code == 200
    assert coordinator.epoch() != before.epoch  # a revocation moves it
    assert not coordinator.recheck(envelope, "hosp-a", "clinic-b").permit


def test_a_bound_envelope_cannot_be_narrowed_by_asking_again(registry: Registry) -> None:
    """The reviewer's attack: a token permitting Condition and Observation is minted for an
    envelope; the sender asks again for the same envelope id with Condition alone. The stored
    question must still hold Observation (the first token does), so when the patient narrows
    consent to Condition the coordinator's recheck of that envelope denies."""
    p = "ab" * 32
    headers = registry.patient_headers(p)
    wide = registry.grant(headers, treat_consent(p, classes=("Condition", "Observation")))
    hosp, coordinator = registry.org("hosp-a"), registry.org("coordinator")
    envelope = str(uuid.uuid4())
    first = hosp.decide(p, "clinic-b", "TREAT", ["Condition", "Observation"], envelope_id=envelope)
    assert first.permit and first.classes == {"Condition", "Observation"}
    retry = hosp.decide(p, "clinic-b", "TREAT", ["Condition"], envelope_id=envelope)
    assert retry.permit and retry.classes == {"Condition"}  # a retry of the same question
    assert coordinator.recheck(envelope, "hosp-a", "clinic-b").permit
    registry.grant(headers, treat_consent(p, classes=("Condition",)))
    r = registry.http.post(f"/fhir/Consent/{wide['id']}/$revoke", headers=headers)
    assert r.status_code == 200
    again = coordinator.recheck(envelope, "hosp-a", "clinic-b")
    assert not again.permit and "no longer permits" in again.reason
    # a retry that now permits less adds nothing and removes nothing: still denied
    assert hosp.decide(p, "clinic-b", "TREAT", ["Condition"], envelope_id=envelope).permit
    assert not coordinator.recheck(envelope, "hosp-a", "clinic-b").permit


def test_a_retry_keeps_the_union_of_what_was_permitted(registry: Registry) -> None:
    """A retry that is permitted more than the first ask widens the stored question: the
    recheck decides every class any token for the envelope permitted."""
    p = "ac" * 32
    headers = registry.patient_headers(p)
    registry.grant(headers, treat_consent(p, classes=("Condition",)))
    hosp, coordinator = registry.org("hosp-a"), registry.org("coordinator")
    envelope = str(uuid.uuid4())
    denied = hosp.decide(p, "clinic-b", "TREAT", ["Observation"], envelope_id=envelope)
    assert not denied.permit
    assert not coordinator.recheck(envelope, "hosp-a", "clinic-b").permit  # permitted nothing
    both = registry.grant(headers, treat_consent(p, classes=("Condition", "Observation")))
    assert hosp.decide(p, "clinic-b", "TREAT", ["Observation"], envelope_id=envelope).permit
    assert coordinator.recheck(envelope, "hosp-a", "clinic-b").permit  # now holds Observation
    r = registry.http.post(f"/fhir/Consent/{both['id']}/$revoke", headers=headers)
    assert r.status_code == 200  # Observation no longer permitted, Condition still
    assert not coordinator.recheck(envelope, "hosp-a", "clinic-b").permit


@pytest.mark.parametrize(
    ("field", "patient", "recipient", "purpose"),
    [
        ("patient", "af" * 32, "clinic-b", "TREAT"),
        ("recipient", "ae" * 32, "clinic-c", "TREAT"),
        ("purpose", "ae" * 32, "clinic-b", "HRESCH"),
    ],
    ids=["patient", "recipient", "purpose"],
)
def test_asking_again_for_a_bound_envelope_with_another_question_is_409(
    registry: Registry, field: str, patient: str, recipient: str, purpose: str
) -> None:
    """An envelope id binds one question: the same requester asking it for another patient,
    recipient or purpose is refused (409) and the stored question is unchanged."""
    p = "ae" * 32
    headers = registry.patient_headers(p)
    registry.grant(headers, treat_consent(p, classes=("Condition", "Observation")))
    other = registry.patient_headers("af" * 32)  # the other patient may be asked for, too
    registry.grant(other, treat_consent("af" * 32, classes=("Condition",)))
    registry.grant(headers, treat_consent(p, "clinic-c", ("Condition",)))
    registry.grant(headers, treat_consent(p, classes=("Condition",), purpose="HRESCH"))
    hosp, coordinator = registry.org("hosp-a"), registry.org("coordinator")
    envelope = str(uuid.uuid4())
    asked = hosp.decide(p, "clinic-b", "TREAT", ["Condition", "Observation"], envelope_id=envelope)
    assert asked.permit
    ledger = registry.http.app.state.ledger  # type: ignore[attr-defined]
    entries = len(ledger.entries())
    with pytest.raises(ConsentRegistryError) as err:
        hosp.decide(patient, recipient, purpose, ["Condition"], envelope_id=envelope)
    assert err.value.status == 409 and f"another {field}" in str(err.value)
    assert len(ledger.entries()) == entries  # no decision was made or audited
    assert coordinator.recheck(envelope, "hosp-a", "clinic-b").permit  # the question stands
    if field == "recipient":  # the stored question still names clinic B, not the new one
        assert not coordinator.recheck(envelope, "hosp-a", recipient).permit
