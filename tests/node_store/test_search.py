"""Search parameters, prefixes, modifiers, paging, sort, _include and compartments."""

from __future__ import annotations

from typing import Any

import pytest

from node.store import FhirStore
from servicekit.outcome import BadRequest

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"


def _patient(family: str, given: str, birth: str, gender: str, ident: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:1.2.3", "value": ident}],
        "name": [{"family": family, "given": [given]}],
        "birthDate": birth,
        "gender": gender,
    }


def _obs(pid: str, code: str, when: str, value: float, status: str = "final") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": status,
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when,
        "valueQuantity": {
            "value": value,
            "unit": "mmHg",
            "system": "http://unitsofmeasure.org",
            "code": "mm[Hg]",
        },
    }


@pytest.fixture
def data(store: FhirStore) -> dict[str, Any]:
    ids: dict[str, Any] = {}
    ids["muller"] = store.create(_patient("Müller", "Zoë", "1950-03-04", "female", "A1")).resource[
        "id"
    ]
    ids["mull"] = store.create(_patient("Mullins", "Adam", "1980", "male", "A2")).resource["id"]
    ids["smith"] = store.create(_patient("Smith", "Eve", "2001-12-24", "female", "A3")).resource[
        "id"
    ]
    p, q = ids["muller"], ids["mull"]
    enc = store.create(
        {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "subject": {"reference": f"Patient/{p}"},
            "period": {"start": "2020-05-01T10:00:00Z", "end": "2020-05-04T12:00:00Z"},
        }
    ).resource["id"]
    ids["enc"] = enc
    obs = [
        _obs(p, "8480-6", "2019-12-31T23:30:00Z", 150),
        _obs(p, "8480-6", "2020-01-15T08:00:00Z", 140),
        _obs(p, "8480-6", "2020-05-02", 130),
        _obs(p, "8462-4", "2020-05-02T09:00:00+02:00", 90),
        _obs(p, "8480-6", "2021-03-01T00:00:00Z", 125, status="amended"),
        _obs(q, "8480-6", "2020-05-02T09:00:00Z", 120),
    ]
    obs[2]["encounter"] = {"reference": f"Encounter/{enc}"}
    ids["obs"] = [store.create(o).resource["id"] for o in obs]
    ids["cond"] = store.create(
        {
            "resourceType": "Condition",
            "clinicalStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                        "code": "active",
                    }
                ]
            },
            "code": {"coding": [{"system": SNOMED, "code": "38341003"}]},
            "subject": {"reference": f"Patient/{p}"},
            "onsetDateTime": "2015-06",
        }
    ).resource["id"]
    ids["medreq"] = store.create(
        {
            "resourceType": "MedicationRequest",
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": {
                "coding": [{"system": "http://www.whocc.no/atc", "code": "C09AA05"}]
            },
            "subject": {"reference": f"Patient/{p}"},
            "authoredOn": "2020-05-03",
        }
    ).resource["id"]
    return ids


def _ids(store: FhirStore, rtype: str, *params: tuple[str, str], **kw: Any) -> set[str]:
    return {r["id"] for r in store.search(rtype, list(params), **kw).resources}


def test_patient_string_and_token_params(store: FhirStore, data: dict[str, Any]) -> None:
    m, n, s = data["muller"], data["mull"], data["smith"]
    assert _ids(store, "Patient", ("family", "mul")) == {m, n}
    assert _ids(store, "Patient", ("family", "MÜLLER")) == {m}  # case and accents ignored
    assert _ids(store, "Patient", ("family", "muller")) == {m}
    assert _ids(store, "Patient", ("given", "zoe")) == {m}
    assert _ids(store, "Patient", ("name", "eve")) == {s}
    assert _ids(store, "Patient", ("family:exact", "Müller")) == {m}
    assert _ids(store, "Patient", ("family:exact", "muller")) == set()
    assert _ids(store, "Patient", ("family:contains", "lli")) == {n}
    assert _ids(store, "Patient", ("gender", "female")) == {m, s}
    assert _ids(store, "Patient", ("gender:not", "female")) == {n}
    assert _ids(store, "Patient", ("identifier", "urn:oid:1.2.3|A2")) == {n}
    assert _ids(store, "Patient", ("identifier", "A3")) == {s}
    assert _ids(store, "Patient", ("identifier", "urn:oid:9|A3")) == set()
    assert _ids(store, "Patient", ("identifier", "A1,A3")) == {m, s}  # comma = OR
    assert _ids(store, "Patient", ("_id", m)) == {m}
    assert _ids(store, "Patient", ("birthdate", "1950")) == {m}
    assert _ids(store, "Patient", ("birthdate", "lt1981")) == {m, n}
    assert _ids(store, "Patient", ("birthdate", "ge1980-06")) == {n, s}  # 1980 overlaps 1980-06+
    assert _ids(store, "Patient", ("birthdate", "gt1980-12-31")) == {s}
    assert _ids(store, "Patient", ("family", "mul"), ("gender", "male")) == {n}  # AND


def test_observation_code_date_and_reference(store: FhirStore, data: dict[str, Any]) -> None:
    p, q, o = data["muller"], data["mull"], data["obs"]
    assert _ids(store, "Observation", ("patient", p)) == set(o[:5])
    assert _ids(store, "Observation", ("subject", f"Patient/{q}")) == {o[5]}
    assert _ids(store, "Observation", ("subject:Patient", q)) == {o[5]}
    assert _ids(store, "Observation", ("code", f"{LOINC}|8462-4")) == {o[3]}
    assert _ids(store, "Observation", ("code", "8462-4")) == {o[3]}
    assert _ids(store, "Observation", ("code", f"{LOINC}|")) == set(o)
    assert _ids(store, "Observation", ("code", "|8462-4")) == set()  # that code has a system
    assert _ids(store, "Observation", ("status", "amended")) == {o[4]}
    assert _ids(store, "Observation", ("category", "vital-signs"), ("patient", q)) == {o[5]}
    assert _ids(store, "Observation", ("encounter", f"Encounter/{data['enc']}")) == {o[2]}
    # comma = OR, with other filters ANDed (the OR-list is one index lookup, see _merge_or)
    both = f"Patient/{p},Patient/{q}"
    assert _ids(store, "Observation", ("patient", both)) == set(o)
    assert _ids(store, "Observation", ("patient", both), ("status", "amended")) == {o[4]}
    assert _ids(store, "Observation", ("patient", f"{q},nobody"), ("code", f"{LOINC}|")) == {o[5]}
    assert _ids(store, "Observation", ("subject", f"Patient/{p},{q}")) == set(o)  # typed + not
    with pytest.raises(BadRequest, match="not a valid target"):
        store.search("Observation", [("patient", f"Patient/{p},Group/{q}")])
    in_2020 = [_ids(store, "Observation", ("patient", x), ("date", "2020")) for x in (p, q)]
    assert _ids(store, "Observation", ("patient", both), ("date", "2020")) == set.union(*in_2020)
    # dates: partial dates are ranges; the +02:00 reading is 07:00Z
    assert _ids(store, "Observation", ("patient", p), ("date", "2020")) == {o[1], o[2], o[3]}
    assert _ids(store, "Observation", ("patient", p), ("date", "eq2020-05")) == {o[2], o[3]}
    assert _ids(store, "Observation", ("patient", p), ("date", "ne2020")) == {o[0], o[4]}
    assert _ids(store, "Observation", ("patient", p), ("date", "ge2020-01-15")) == {
        o[1],
        o[2],
        o[3],
        o[4],
    }
    assert _ids(store, "Observation", ("patient", p), ("date", "gt2020-12-31")) == {o[4]}
    assert _ids(store, "Observation", ("patient", p), ("date", "lt2020")) == {o[0]}
    assert _ids(store, "Observation", ("patient", p), ("date", "le2020-01-15")) == {o[0], o[1]}
    assert _ids(store, "Observation", ("date", "2020-05-02T07:00:00Z")) == {o[3]}
    assert _ids(store, "Observation", ("date", "sa2020-12")) == {o[4]}
    assert _ids(store, "Observation", ("date", "eb2020")) == {o[0]}
    assert _ids(
        store, "Observation", ("patient", p), ("date", "ge2020"), ("date", "lt2020-02")
    ) == {o[1]}
    assert _ids(store, "Observation", ("value-quantity", "gt135")) == {o[0], o[1]}
    assert _ids(
        store, "Observation", ("value-quantity", "120|http://unitsofmeasure.org|mm[Hg]")
    ) == {o[5]}
    # a period overlaps: the encounter covers 2020-05-01..04
    assert _ids(store, "Encounter", ("date", "2020-05-02")) == set()  # not contained in the day
    assert _ids(store, "Encounter", ("date", "ge2020-05-03")) == {data["enc"]}
    assert _ids(store, "Encounter", ("date", "2020-05")) == {data["enc"]}
    assert _ids(store, "Condition", ("clinical-status", "active"), ("onset-date", "2015")) == {
        data["cond"]
    }
    assert _ids(
        store, "MedicationRequest", ("intent", "order"), ("authoredon", "le2020-05-03")
    ) == {data["medreq"]}
    assert _ids(store, "MedicationRequest", ("code", "C09AA05")) == {data["medreq"]}


def test_last_updated_and_missing(store: FhirStore, data: dict[str, Any]) -> None:
    first = store.read("Patient", data["muller"])["meta"]["lastUpdated"]
    assert data["muller"] in _ids(store, "Patient", ("_lastUpdated", f"ge{first}"))
    assert _ids(store, "Patient", ("_lastUpdated", "lt2000")) == set()
    assert _ids(store, "Patient", ("_lastUpdated", "gt2000")) == {
        data["muller"],
        data["mull"],
        data["smith"],
    }
    assert _ids(store, "Observation", ("encounter:missing", "false")) == {data["obs"][2]}


def test_paging_total_and_sort(store: FhirStore, data: dict[str, Any]) -> None:
    p, o = data["muller"], data["obs"]
    page1 = store.search("Observation", [("patient", p), ("_count", "2"), ("_sort", "date")])
    assert page1.total == 5 and page1.count == 2 and page1.offset == 0
    page2 = store.search(
        "Observation", [("patient", p), ("_count", "2"), ("_offset", "2"), ("_sort", "date")]
    )
    page3 = store.search(
        "Observation", [("patient", p), ("_count", "2"), ("_offset", "4"), ("_sort", "date")]
    )
    order = [r["id"] for r in page1.resources + page2.resources + page3.resources]
    assert order == [o[0], o[1], o[2], o[3], o[4]]  # o[2] is a whole day, from 00:00Z
    desc = store.search("Observation", [("patient", p), ("_sort", "-date")])
    assert [r["id"] for r in desc.resources][0] == o[4]
    by_update = store.search("Patient", [("_sort", "-_lastUpdated")])
    assert by_update.resources[0]["id"] == data["smith"]
    assert store.search("Observation", [("_count", "0")]).resources == []
    assert store.search("Observation", [("_summary", "count")]).total == 6
    assert store.search("Observation", [("_count", "5000")]).count == 1000
    default = store.search("Observation", [])
    assert default.count == 50 and default.total == 6


def test_include_and_compartment(store: FhirStore, data: dict[str, Any]) -> None:
    p, q = data["muller"], data["mull"]
    found = store.search("Observation", [("code", "8480-6"), ("_include", "Observation:patient")])
    assert {r["id"] for r in found.included} == {p, q}
    assert all(r["resourceType"] == "Patient" for r in found.included)
    found = store.search("Observation", [("patient", q), ("_include", "*:subject")])
    assert [r["id"] for r in found.included] == [q]
    # a caller limited to q's compartment sees only q's data
    assert _ids(store, "Observation", compartment_patient=q) == {data["obs"][5]}
    assert _ids(store, "Observation", ("patient", p), compartment_patient=q) == set()
    assert _ids(store, "Patient", compartment_patient=q) == {q}
    assert _ids(store, "Encounter", compartment_patient=q) == set()


BAD_SEARCHES = [
    ([("foo", "1")], "foo"),
    ([("code:in", "x")], "code:in"),
    ([("family:exact", "x")], "family"),  # Observation has no family
    ([("date", "2020-13-01")], "2020-13-01"),
    ([("date", "xx2020")], "xx"),
    ([("date", "zz2020")], "zz"),
    ([("date", "yesterday")], "date"),
    ([("_count", "many")], "_count"),
    ([("_offset", "-1")], "_offset"),
    ([("_sort", "value-quantity")], "value-quantity"),
    ([("_include", "Patient:organization")], "Patient:organization"),
    ([("_include", "Observation:code")], "code"),
    ([("_revinclude", "Spaceship:target")], "_revinclude"),
    ([("_revinclude", "Observation:code")], "code"),
    # chains (one level) and _has: an unknown parameter on either side is named
    ([("subject.nosuch", "x")], "nosuch"),
    ([("code.name", "x")], "code"),
    ([("subject:Patient.organization.name", "x")], "one level"),
    ([("subject:Spaceship.name", "x")], "Spaceship"),
    ([("_has:Spaceship:subject:code", "x")], "Spaceship"),
    ([("_has:Condition:nosuch:code", "x")], "nosuch"),
    ([("_has:Condition:subject", "x")], "_has"),
    ([("value-quantity", "lots")], "lots"),
    ([("encounter:missing", "maybe")], "missing"),
]


def test_bad_search_input_is_named(store: FhirStore) -> None:
    for params, named in BAD_SEARCHES:
        with pytest.raises(BadRequest) as err:
            store.search("Observation", params)
        assert named in err.value.diagnostics, (params, err.value.diagnostics)


def test_unsupported_type_is_refused(store: FhirStore) -> None:
    with pytest.raises(BadRequest, match="Spaceship"):
        store.search("Spaceship", [])
