"""FHIR Consent ⇄ internal model: round trips, and every malformed field is named."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consent.fhir import PSEUDONYM_SYSTEM, from_fhir, to_fhir
from consent.policy import PURPOSES, RESOURCE_CLASSES, ConsentRecord, Period, Provision
from servicekit.outcome import BadRequest

ORGS = ["clinic-b", "hosp-a", "authority"]
opt = lambda items: st.none() | st.frozensets(st.sampled_from(sorted(items)), min_size=1)  # noqa: E731
times = st.integers(0, 10**6).map(lambda n: datetime.fromtimestamp(1.7e9 + n * 60, UTC))


@st.composite
def periods(draw: st.DrawFn) -> Period | None:
    if draw(st.booleans()):
        return None
    a, b = sorted([draw(times), draw(times)])
    return Period(draw(st.sampled_from([a, None])), draw(st.sampled_from([b, None])))


nested = st.builds(
    Provision,
    type=st.sampled_from(["permit", "deny"]),
    actors=opt(ORGS),
    purposes=opt(PURPOSES),
    classes=opt(RESOURCE_CLASSES),
    period=periods(),
)
records = st.builds(
    ConsentRecord,
    id=st.just("c-1"),
    patient=st.text("abcdef0123456789", min_size=8, max_size=64),
    status=st.sampled_from(["active", "inactive", "rejected"]),
    provision=st.builds(
        Provision,
        type=st.sampled_from(["permit", "deny"]),
        actors=opt(ORGS),
        purposes=opt(PURPOSES),
        classes=opt(RESOURCE_CLASSES),
        data_period=periods(),
        provisions=st.lists(nested, max_size=3).map(tuple),
    ),
    period=periods(),
)


@settings(max_examples=100, deadline=None)
@given(records)
def test_round_trip(record: ConsentRecord) -> None:
    assert from_fhir(to_fhir(record)) == record


def good() -> dict[str, Any]:
    return to_fhir(
        ConsentRecord(
            "c-1",
            "abc123",
            "active",
            Provision(
                "deny",
                provisions=(
                    Provision(
                        "permit",
                        actors=frozenset({"clinic-b"}),
                        purposes=frozenset({"TREAT"}),
                        classes=frozenset({"Condition"}),
                    ),
                ),
            ),
            period=Period(datetime(2026, 1, 1, tzinfo=UTC), None),
        )
    )


def _set(body: dict[str, Any], path: list[Any], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(body)
    target = out
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return out


BAD = [
    (["provision", "provision", 0, "purpose", 0, "code"], "SHOPPING", "purpose"),
    (["provision", "provision", 0, "class", 0, "code"], "Spaceship", "class[0]"),
    (["provision", "period"], {"start": "2026-05-01", "end": "2026-01-01"}, "period"),
    (["patient"], KeyError, "Consent.patient"),
    (["patient", "identifier", "system"], "urn:national-id", "Consent.patient.identifier"),
    (["status"], "maybe", "Consent.status"),
    (["scope", "coding", 0, "code"], "research", "Consent.scope"),
    (["category", 0, "coding", 0, "code"], "1234-5", "Consent.category"),
    (["provision", "type"], "allow", "Consent.provision.type"),
    (["provision", "provision", 0, "actor", 0, "reference", "reference"], "Patient/x", "reference"),
    (["provision", "provision", 0, "actor", 0, "role", "coding", 0, "code"], "AUT", "role"),
    (["provision", "period", "start"], "not-a-date", "period"),
    (["provision", "provision", 0, "provision"], [{"type": "deny"}], "provision"),
    (["resourceType"], "Patient", "resourceType"),
]


@pytest.mark.parametrize(("path", "value", "named"), BAD)
def test_bad_fields_are_named(path: list[Any], value: Any, named: str) -> None:
    with pytest.raises(BadRequest) as err:
        from_fhir(_set(good(), path, value))
    assert named in err.value.diagnostics or any(named in e for e in err.value.expression or [])


def test_wire_shape() -> None:
    body = good()
    assert body["scope"]["coding"][0]["code"] == "patient-privacy"
    assert body["category"][0]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "59284-0",
        "display": "Patient consent",
    }
    nested_p = body["provision"]["provision"][0]
    assert nested_p["actor"][0]["reference"] == {"reference": "Organization/clinic-b"}
    assert nested_p["purpose"][0]["system"] == "http://terminology.hl7.org/CodeSystem/v3-ActReason"
    assert nested_p["class"][0]["system"] == "http://hl7.org/fhir/resource-types"
    assert body["patient"]["identifier"]["system"] == PSEUDONYM_SYSTEM
    assert body["policyRule"]["coding"][0]["code"] == "OPTIN"
