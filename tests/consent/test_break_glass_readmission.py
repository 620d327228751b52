"""The re-admission rule of consent/break_glass.py (pure): a re-check of a break-glass envelope
re-admits only the grant the registry's own ``break_glass`` AuditEvent records — the same
envelope, patient, sender and recipient, every asked class covered. The events are built by
trust.audit_events exactly as consent/decisions.py records a grant."""

from __future__ import annotations

import pytest

from consent.break_glass import Grant, find_grant, grants_in, pull_refusal, readmission_refusal
from consent.decisions import DECISION_SYSTEM
from trust import audit_events

ENV, PATIENT = "0b6f3c1e-5d1a-4f7e-9a51-1c2d3e4f5a6b", "pseudo-1"


def _grant_event(envelope_id: str | None = ENV) -> dict:
    event = audit_events.break_glass(
        user="u-42", org="hosp-a", recipient="clinic-c", patient_pseudonym=PATIENT,
        reason="unconscious in the ED", classes=["AllergyIntolerance", "Condition"],
        observer="consent-registry", envelope_id=envelope_id,
    )  # fmt: skip
    event["entity"].append(
        {
            "what": {"identifier": {"system": DECISION_SYSTEM, "value": "d-1"}},
            "detail": [{"type": "acting-role", "valueString": "doctor"}],
        }
    )
    return event


def test_a_grant_is_read_back_from_its_audit_event() -> None:
    (grant,) = grants_in([(_grant_event(), PATIENT)], DECISION_SYSTEM)
    assert (grant.envelope_id, grant.requester, grant.recipient) == (ENV, "hosp-a", "clinic-c")
    assert (grant.user, grant.role, grant.decision_id) == ("u-42", "doctor", "d-1")
    assert grant.classes == {"AllergyIntolerance", "Condition"}
    assert grant.reason == "unconscious in the ED"
    # a break-glass decision not bound to an envelope re-admits nothing
    assert grants_in([(_grant_event(None), PATIENT)], DECISION_SYSTEM) == []


@pytest.mark.parametrize(
    ("change", "refused_because"),
    [
        ({}, None),
        ({"classes": frozenset({"Condition"})}, None),  # fewer classes than granted
        ({"envelope_id": "another"}, "no break-glass was granted"),
        ({"patient": "pseudo-2"}, "another patient"),
        ({"sender": "clinic-b"}, "another sender"),
        ({"sender": None}, "another sender"),
        ({"recipient": "clinic-b"}, "another recipient"),
        ({"classes": frozenset({"Condition", "Observation"})}, "does not cover ['Observation']"),
    ],
)
def test_readmission_binds_envelope_patient_sender_recipient_and_classes(
    change: dict, refused_because: str | None
) -> None:
    ask = {"envelope_id": ENV, "patient": PATIENT, "sender": "hosp-a", "recipient": "clinic-c",
           "classes": frozenset({"AllergyIntolerance", "Condition"})} | change  # fmt: skip
    grants = grants_in([(_grant_event(), PATIENT)], DECISION_SYSTEM)
    refusal = readmission_refusal(find_grant(grants, ask["envelope_id"]), **ask)
    if refused_because is None:
        assert refusal is None
    else:
        assert refusal is not None and refused_because in refusal


# --- a break-glass pull's grant carries on its queries and answers (pull_refusal) -------------


def _pull_grant() -> Grant:
    event = audit_events.break_glass(
        user="u-7", org="clinic-c", recipient="clinic-c", patient_pseudonym=PATIENT,
        reason="collapsed, history unknown", classes=["Condition", "Observation"],
        observer="consent-registry", envelope_id=ENV,
    )  # fmt: skip
    decision = {"system": DECISION_SYSTEM, "value": "d-7"}
    role = [{"type": "acting-role", "valueString": "doctor"}]
    event["entity"].append({"what": {"identifier": decision}, "detail": role})
    (grant,) = grants_in([(event, PATIENT)], DECISION_SYSTEM)
    return grant


@pytest.mark.parametrize(
    ("which", "patient", "recipient", "classes", "why"),
    [
        ("pull", PATIENT, "clinic-c", {"Condition"}, None),
        ("pull", PATIENT, "clinic-c", {"Condition", "Observation"}, None),
        ("pull", "pseudo-2", "clinic-c", {"Condition"}, "for another patient"),
        ("pull", PATIENT, "hosp-a", {"Condition"}, "brings data only to clinic-c"),
        ("pull", PATIENT, "clinic-c", {"Condition", "Procedure"}, "does not cover ['Procedure']"),
        ("referral", PATIENT, "clinic-c", {"Condition"}, "is not a pull"),
        (None, PATIENT, "clinic-c", {"Condition"}, "no break-glass pull was granted"),
    ],
)
def test_a_pull_grant_carries_on_only_towards_its_organisation(
    which: str | None, patient: str, recipient: str, classes: set[str], why: str | None
) -> None:
    grant = {"pull": _pull_grant(), "referral": grants_in([(_grant_event(), PATIENT)],
             DECISION_SYSTEM)[0], None: None}[which]  # fmt: skip
    refusal = pull_refusal(
        grant,
        pull=ENV,
        patient=patient,
        recipient=recipient,
        classes=frozenset(classes),  # type: ignore[arg-type]
    )
    if why is None:
        assert refusal is None
    else:
        assert refusal is not None and why in refusal


# --- what was carried on a pull grant is never a grant of its own (carried_from) --------------


def _carried(envelope_id: str, *, pull: str = "d-7", decision_id: str = "d-8") -> Grant:
    """A record query asked under the pull grant ``pull``, recorded as consent/decisions.py
    records it: the pull's clinician and reason, the pull grant's decision id as ``pull``."""
    event = audit_events.break_glass(
        user="u-7", org="clinic-c", recipient="clinic-c", patient_pseudonym=PATIENT,
        reason="collapsed, history unknown", classes=["Condition"],
        observer="consent-registry", envelope_id=envelope_id, user_org="clinic-c",
    )  # fmt: skip
    details = [{"type": "acting-role", "valueString": "doctor"},
               {"type": "pull", "valueString": pull}]  # fmt: skip
    decision = {"system": DECISION_SYSTEM, "value": decision_id}
    event["entity"].append({"what": {"identifier": decision}, "detail": details})
    (grant,) = grants_in([(event, PATIENT)], DECISION_SYSTEM)
    return grant


QUERY = "5e0c1d2a-7b3f-4a8e-9c6d-0f1e2d3c4b5a"


def test_an_entry_carried_on_a_pull_is_read_back_as_such() -> None:
    carried = _carried(QUERY)
    assert (carried.envelope_id, carried.carried_from, carried.decision_id) == (QUERY, "d-7", "d-8")
    assert carried.requester == carried.recipient == "clinic-c"  # looks like a pull grant...
    assert _pull_grant().carried_from == ""  # ...but the clinician's own grant carries nothing


def test_no_pull_carries_on_from_an_entry_that_was_itself_carried() -> None:
    refusal = pull_refusal(
        _carried(QUERY), pull=QUERY, patient=PATIENT, recipient="clinic-c",
        classes=frozenset({"Condition"}),
    )  # fmt: skip
    assert refusal is not None and "was carried from the pull grant d-7" in refusal


@pytest.mark.parametrize(
    ("recent", "own_question", "why"),
    [
        ("pull", True, None),  # the coordinator's $recheck of the query's own envelope
        ("pull", False, "only for its own envelope"),  # a lookup naming the query
        ("none", True, "pull grant d-7 that envelope"),  # the clinician's grant is > 24 h old
        ("chained", True, "pull grant d-7 that envelope"),  # carried from a carried entry
    ],
)
def test_a_carried_entry_is_readmitted_only_for_its_own_envelope_within_the_pulls_window(
    recent: str, own_question: bool, why: str | None
) -> None:
    carried = _carried(QUERY)
    chained = _carried(ENV, pull="d-6", decision_id="d-7")  # a renewal made before the fix
    window = {"pull": [_pull_grant(), carried], "none": [carried], "chained": [chained, carried]}
    refusal = readmission_refusal(
        carried, envelope_id=QUERY, patient=PATIENT, sender="clinic-c", recipient="clinic-c",
        classes=frozenset({"Condition"}), recent=window[recent], own_question=own_question,
    )  # fmt: skip
    if why is None:
        assert refusal is None
    else:
        assert refusal is not None and why in refusal
    # the clinician's own grant is re-admitted on either path (the locator lookup names it)
    assert readmission_refusal(
        _pull_grant(), envelope_id=ENV, patient=PATIENT, sender="clinic-c", recipient="clinic-c",
        classes=frozenset({"Condition"}), recent=window[recent], own_question=own_question,
    ) is None  # fmt: skip
